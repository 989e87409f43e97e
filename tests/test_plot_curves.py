"""scripts/plot_curves.py draws a run's accuracy and entropy curves from its TensorBoard events."""

import json
import sys

from tests.conftest import run_script


def test_plot_curves_writes_a_png_with_alarms(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "run"
    writer = SummaryWriter(log_dir=str(run / "tb"))
    for step in (0, 40, 80):
        writer.add_scalar("eval/acc_t1", 0.5 + step / 1000, step)
        writer.add_scalar("eval/acc_t2", 0.6 + step / 1000, step)
        writer.add_scalar("eval/se_acc_t2", 0.015, step)
    for step in range(1, 81):
        writer.add_scalar("train/entropy", 0.3 - step / 1000, step)
    writer.close()
    (run / "summary.json").write_text(json.dumps({"train": {"guard_alarms": ["step 80: the training reward rose"]}}))
    out = tmp_path / "curves.png"
    proc = run_script([sys.executable, "scripts/plot_curves.py", str(run), "--out", str(out), "--labels", "x"],
                      timeout=120)
    assert f"wrote {out}" in proc.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
