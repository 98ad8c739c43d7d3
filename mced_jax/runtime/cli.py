"""Flag parsing shared by the small command-line tools (predict, compare, prepare).

`python -m mced_jax.main` uses absl.app with config flags; the tools parse their own
absl FlagValues. This gives them the same answers: --help prints usage, the module
text and the flags; an unknown or malformed flag prints the problem and the usage.
"""

from __future__ import annotations

import sys


def parse(fv, argv, usage: str, doc: str = "") -> list[str]:
  """The positional arguments after the program name; exits 0 after --help and 2
  (with the problem on stderr) on a bad flag."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  if any(a in ("-h", "--help", "--helpshort", "--helpfull") for a in argv[1:]):
    print("\n".join(p for p in (usage, doc.strip(), fv.get_help()) if p))
    raise SystemExit(0)
  try:
    return fv(list(argv))[1:]
  except flags.Error as e:
    print(f"error: {e}\n{usage}", file=sys.stderr)
    raise SystemExit(2) from None


def define_report_flags(fv, holdout_default: str = "fold6") -> None:
  """--holdout and --out, for the tools that write a markdown report over folds."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  flags.DEFINE_string("holdout", holdout_default, "comma-separated held-out fold names "
                      "(prefixes); empty: none", flag_values=fv)
  flags.DEFINE_string("out", "", "write the report here too (markdown)", flag_values=fv)


def holdout(fv) -> list[str]:
  return [h.strip() for h in fv.holdout.split(",") if h.strip()]


def emit(text: str, out: str) -> int:
  """Prints the report, writes it to `out` when given; the exit status (0)."""
  from mced_jax.runtime import fs  # pylint: disable=import-outside-toplevel
  print(text)
  if out:
    fs.write_text(out, text)
  return 0
