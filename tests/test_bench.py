"""bench.py runs end to end on a tiny model and reports every figure the JSON line promises (no timing asserted)."""
import bench

KEYS = {"matmul_peak_gflops", "mfu_pretrain", "loop_vs_bare", "kv_speedup_64", "kv_speedup_256", "ppo_iter_seconds",
        "dpo_step_seconds", "rm_step_seconds", "device"}


def test_bench_reports_every_figure(capsys):
    cfg = bench.BenchConfig(device="cpu", n_layer=1, n_head=2, n_embd=32, vocab_size=300, block_size=128,
                            batch_size=4, steps=2, repeats=1)
    result = bench.main(cfg)
    assert KEYS <= set(result)
    assert all(result[k] > 0 for k in KEYS - {"device"}) and result["device"] == "cpu"
    assert '"loop_vs_bare"' in capsys.readouterr().out.splitlines()[-1]  # the JSON line comes last


def test_matched_shapes_report_tokens_and_steps_per_second(capsys):
    cfg = bench.BenchConfig(device="cpu", n_layer=1, n_head=2, n_embd=32, vocab_size=300, block_size=128,
                            steps=2, repeats=1, matched=True)
    result = bench.main(cfg)
    for name in ("sft", "rm", "dpo", "ppo"):
        assert result[f"matched_{name}_tokens_per_s"] > 0 and result[f"matched_{name}_steps_per_s"] > 0
        # tokens/s is the step's tokens over its seconds: sft 16 x 128, rm and dpo twice that, ppo 16 x 128
        tokens = {"sft": 2048, "rm": 4096, "dpo": 4096, "ppo": 2048}[name]
        assert abs(result[f"matched_{name}_tokens_per_s"] * result[f"matched_{name}_step_seconds"] - tokens) < 0.01 * tokens
    assert capsys.readouterr().out.splitlines()[-1].startswith("{")
