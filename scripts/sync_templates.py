"""Regenerate grutrain/tasks/<task>/template.yaml (the starters of `grutrain init`) from configs/.

Run after changing configs/sunspots.yaml, names.yaml or adding.yaml: tests/commands/test_init.py fails while a
template has drifted from its config. (tasks/lm/template.yaml is kept by hand from configs/charlm.yaml.)
"""
from pathlib import Path
root = Path(__file__).resolve().parent.parent  # the checkout
def sync(src, dst, edits):
    s = (root / "configs" / src).read_text().replace(f"configs/{src}", "{config}")
    for old, new in edits:
        if old in s:
            s = s.replace(old, new)
        else:
            print(f"{dst}: anchor not found: {old[:60]!r}")
    (root / "grutrain" / "tasks" / dst / "template.yaml").write_text(s)
sync("names.yaml", "classify", [
  ("# Inspect:   grutrain fit {config} --print-config\n", "# Inspect:   grutrain fit {config} --print-config\n# LR test:   grutrain lr-find {config}\n"),
  ("# Then:      grutrain eval runs/names-1/checkpoints/best.pt --split test --json\n", "# Then:      grutrain eval runs/names-1/checkpoints/best.pt --split test --plot confusion.png\n"),
  ("#\n# data/names.jsonl is built by", "#\n# data/names.jsonl ships with grutrain (run from its checkout, or point data.path at your own\n# JSONL, CSV or .ts examples); it is built by"),
])
sync("adding.yaml", "synthetic", [
  ("# Inspect:   grutrain fit {config} --print-config\n", "# Inspect:   grutrain fit {config} --print-config\n# LR test:   grutrain lr-find {config}\n"),
  ("# A few minutes on 2 CPU cores; ends with the test MSE next to always_one_mse.", "# Nothing to download: the sequences are generated from train.seed. A few minutes on 2 CPU\n# cores; ends with the test MSE next to always_one_mse."),
])
sync("sunspots.yaml", "forecast", [
  ("# Inspect:   grutrain fit {config} --print-config\n", "# Inspect:   grutrain fit {config} --print-config\n# LR test:   grutrain lr-find {config}\n"),
  ("# Then:      grutrain eval runs/sunspots-1/checkpoints/best.pt --split test\n", "# Then:      grutrain eval runs/sunspots-1/checkpoints/best.pt --split test --plot forecast.png\n"),
  ("#\n# Well under a minute", "#\n# data/sunspots.csv ships with grutrain: run from its checkout, or point data.path at any CSV\n# with a header row.\n# Well under a minute"),
])
