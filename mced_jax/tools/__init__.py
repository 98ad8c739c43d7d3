"""User tools on finished models: prediction on audio files, frozen-student probes,
labelling pair manifests with the teacher."""
