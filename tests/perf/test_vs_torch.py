"""The side-by-side report: per-round ratios, their median, and each side's best dtype."""

from mced_jax.perf import vs_torch


def _run(k, d, side, ex):
  return {"round": k, "dtype": d, "side": side, "examples_per_s": ex}


def test_ratios_per_round_and_best_dtype_per_side():
  runs = [_run(1, "float32", "torch", 4.0), _run(1, "float32", "mced_jax", 4.4),
          _run(1, "bfloat16", "torch", 0.5), _run(1, "bfloat16", "mced_jax", 3.0),
          _run(2, "float32", "torch", 5.0), _run(2, "float32", "mced_jax", 4.5),
          _run(2, "bfloat16", "torch", 0.6), _run(2, "bfloat16", "mced_jax", 3.3),
          _run(3, "float32", "torch", 4.2), _run(3, "float32", "mced_jax", 4.41)]
  s = vs_torch.summarize(runs, ["float32", "bfloat16"])
  assert [round(r, 3) for r in s["per_dtype"]["float32"]["ratios"]] == [1.1, 0.9, 1.05]
  assert round(s["per_dtype"]["float32"]["median_ratio"], 3) == 1.05
  assert len(s["per_dtype"]["bfloat16"]["ratios"]) == 2
  # Each side's best is its own fastest dtype by median: both fp32 here.
  assert s["best"]["mced_jax"]["dtype"] == "float32" and s["best"]["torch"]["dtype"] == "float32"
  assert round(s["best"]["ratio"], 4) == round(4.41 / 4.2, 4)
  text = vs_torch.report(runs, ["float32", "bfloat16"], {"cpu": "X", "cores": 2,
                                                          "bf16_units": False}, {
      "batch": 16, "frames": 400, "tokens": 32})
  assert "| 2 | float32 | 5.00 | 4.50 | 0.90x |" in text and "median **1.05x**" in text


def test_a_round_missing_one_side_is_not_a_ratio():
  runs = [_run(1, "float32", "torch", 4.0), _run(1, "float32", "mced_jax", 4.4),
          _run(2, "float32", "torch", 5.0)]
  s = vs_torch.summarize(runs, ["float32"])
  assert len(s["per_dtype"]["float32"]["ratios"]) == 1


def test_peer_output_json_is_the_last_json_line():
  out = "loading...\n{\"a\": 1}\nwarning\n{\"examples_per_s\": 4.2, \"step_ms_median\": 3800}\n"
  assert vs_torch._last_json_line(out)["examples_per_s"] == 4.2  # pylint: disable=protected-access


def test_lanes_take_one_cpu_per_physical_core(tmp_path):
  # 4 physical cores, each with two SMT siblings (cpu k and k+4), as Linux lists them.
  for cpu in range(8):
    d = tmp_path / f"cpu{cpu}" / "topology"
    d.mkdir(parents=True)
    (d / "thread_siblings_list").write_text(f"{cpu % 4},{cpu % 4 + 4}\n")
  cores = vs_torch.physical_cores(allowed=set(range(8)), topology=str(tmp_path))
  assert cores == [0, 1, 2, 3]
  assert vs_torch.lanes_of(cores, 2, 3) == [[0, 1], [2, 3]]  # only two fit
  try:
    vs_torch.lanes_of(cores, 8, 1)
  except ValueError as e:
    assert "only 4 physical cores" in str(e)
  else:
    raise AssertionError("asked for more cores than there are")


def test_xla_kernels_side_gets_its_own_ratio_and_column():
  runs = [_run(1, "bfloat16", "torch", 10.0), _run(1, "bfloat16", "mced_jax", 9.0),
          _run(1, "bfloat16", "mced_jax_xla", 12.0)]
  s = vs_torch.summarize(runs, ["bfloat16"])
  assert s["per_dtype"]["bfloat16"]["xla_ratios"] == [1.2]
  assert s["best"]["mced_jax"]["examples_per_s"] == 9.0  # the default path, not the variant
  text = vs_torch.report(runs, ["bfloat16"], {"cpu": "X", "cores": 2, "bf16_units": True},
                         {"batch": 16, "frames": 400, "tokens": 32})
  assert "| 1 | bfloat16 | 10.00 | 9.00 | 0.90x | 12.00 | 1.20x |" in text
