"""vit_speedrun/train/report.py's summary: what a short or resumed run's figures are."""
from vit_speedrun.train import report


def _summary(step, session_steps):
    return report.summary(
        folder="runs/x", step=step, total_steps=111_477, global_batch=1024, n_train=1_268_355,
        session_steps=session_steps, wall_s=60.0, session_train_s=50.0, session_eval_s=5.0,
        train_time_s=50.0, img_s=5000.0, devices=8, device="cuda", flops_per_image=27.4e9,
        peak_tflops=989.0, peak_source="given", recompiles=0, log=[], variant="S/16",
        img_size=224)


def test_a_short_or_resumed_session_says_its_figures_are_not_steady():
    short = report.summary_text(_summary(step=50, session_steps=50))
    assert "not a steady-state measure: this session ran 50 steps;" in short
    resumed = report.summary_text(_summary(step=5000, session_steps=120))
    assert "ran 120 steps after a resume" in resumed
    steady = report.summary_text(_summary(step=5000, session_steps=5000))
    assert "steady-state" not in steady and "projection to all 111,477 steps" in steady
