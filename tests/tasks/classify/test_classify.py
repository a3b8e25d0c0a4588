"""task: classify -- readers (JSONL, CSV, .ts), splits, encoding, padding invariance, metrics,
the names data set, and fit / eval / predict / bad input through the real CLI."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
import yaml

from grutrain.config.schema import ModelConfig
from grutrain.tasks import load_config
from grutrain.tasks.classify.examples import Encoder, sort_labels, stratified_split
from grutrain.tasks.classify.files import file_format, read_examples
from grutrain.errors import GrutrainError
from grutrain.model import SequenceModel
from grutrain.tasks.classify.task import (ClassifyTask, accuracy_and_macro_f1, confusion_markdown, confusion_matrix,
                                     majority_baseline)

ROOT = Path(__file__).resolve().parents[3]


# ---------------------------------------------------------------------------------------------
# Small data files written here
# ---------------------------------------------------------------------------------------------

def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def letter_examples(n: int = 64, seed: int = 0) -> list[dict]:
    """Learnable text: words starting with 'a' are "A", with 'b' "B", with 'c' "C" (fewer)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        first = "aabbbc"[i % 6]
        rows.append({"x": first + "".join(rng.choice("xyz") for _ in range(rng.randint(0, 6))), "y": first.upper()})
    return rows


TS_UNIVARIATE = """# a comment
@problemName Tiny
@timeStamps false
@missing false
@univariate true
@equalLength true
@seriesLength 4
@classLabel true 1 2
@data
1.0,2.0,3.0,4.0:1
4,3,2,1:2

0.5,0.5,0.5,0.5:1
"""

TS_MULTIVARIATE = """@problemName TinyVariable
@timeStamps false
@missing true
@univariate false
@dimensions 2
@equalLength false
@classLabel true up down
@data
1,2,3:10,20,30:up
5,?,4,?,?:50,60,?,?,?:down
7:70:up
"""


@pytest.fixture
def classify_config(tmp_path: Path):
    """classify_config(data_path, **section_updates) -> path of a tiny classify YAML config."""
    def write(data_path: Path, name: str = "cfg.yaml", **updates) -> Path:
        cfg = {
            "task": "classify",
            "data": {"path": str(data_path), "val_fraction": 0.25, "test_fraction": 0.25},
            "model": {"embedding_dim": 4, "hidden_size": 8, "bidirectional": True},
            "optim": {"lr": 0.01},
            "train": {"max_steps": 6, "batch_size": 4, "eval_every": 3, "checkpoint_every": 3, "log_every": 1,
                      "device": "cpu", "threads": 1},
            "run": {"dir": str(tmp_path / "run")},
        }
        for section, values in updates.items():
            cfg[section].update(values)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path
    return write


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 1, err
    assert err.startswith("error: ") and err.strip().count("\n") == 0, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)


# ---------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------

def test_ts_univariate_parses_values_labels_and_skips_comments(tmp_path):
    path = tmp_path / "tiny.ts"
    path.write_text(TS_UNIVARIATE)
    ex = read_examples(path, "ts")
    assert ex.kind == "numeric" and ex.channels == 1
    assert ex.ys == ["1", "2", "1"]
    assert [x.squeeze(1).tolist() for x in ex.xs] == [[1, 2, 3, 4], [4, 3, 2, 1], [0.5] * 4]
    assert ex.where == ["line 10", "line 11", "line 13"]


def test_ts_variable_length_multivariate_with_missing_values(tmp_path):
    path = tmp_path / "var.ts"
    path.write_text(TS_MULTIVARIATE)
    ex = read_examples(path, "ts")
    assert ex.channels == 2 and ex.ys == ["up", "down", "up"]
    assert ex.xs[0].tolist() == [[1, 10], [2, 20], [3, 30]]  # [T, C]: one row per step
    # Trailing steps missing in every channel are padding and dropped; a gap inside stays NaN.
    second = ex.xs[1]
    assert second.shape == (3, 2)
    assert second[:, 0].tolist()[0] == 5 and math.isnan(second[1, 0]) and second[2, 0] == 4
    assert second[:2, 1].tolist() == [50, 60] and math.isnan(second[2, 1])
    assert ex.xs[2].tolist() == [[7, 70]]


def test_missing_values_become_the_training_mean():
    from grutrain.tasks.classify.files import Examples

    train = Examples("mem")
    train.add(torch.tensor([[1.0], [3.0]], dtype=torch.float64), "a", "line 1")
    train.add(torch.tensor([[math.nan], [5.0]], dtype=torch.float64), "b", "line 2")
    enc = Encoder.fit(train, None)
    assert enc.mean.tolist() == [3.0]  # mean of 1, 3, 5 (the missing value is not counted)
    assert enc.std.tolist() == pytest.approx([math.sqrt(8 / 3)])
    encoded = enc.encode(train)
    assert encoded[1][0, 0].item() == 0.0  # missing -> the mean -> 0
    assert encoded[0][:, 0].tolist() == pytest.approx([-2 / math.sqrt(8 / 3), 0.0])


def test_csv_rows_of_different_lengths_and_a_label_column_anywhere(tmp_path):
    path = tmp_path / "series.csv"
    path.write_text("v1,cls,v2,v3\n1,a,2,3\n4,b,5,\n6,a,,\n")
    ex = read_examples(path, "csv", label_column="cls")
    assert ex.ys == ["a", "b", "a"]
    assert [x.squeeze(1).tolist() for x in ex.xs] == [[1, 2, 3], [4, 5], [6]]


def test_jsonl_text_univariate_and_multivariate(tmp_path):
    text = read_examples(write_jsonl(tmp_path / "t.jsonl", [{"x": "Mary", "y": "f"}, {"x": "ab", "y": 3}]),
                         "jsonl", lowercase=True)
    assert text.kind == "text" and text.xs == ["mary", "ab"] and text.ys == ["f", "3"]
    uni = read_examples(write_jsonl(tmp_path / "u.jsonl", [{"x": [1, 2.5], "y": "a"}]), "jsonl")
    assert uni.xs[0].tolist() == [[1.0], [2.5]]
    multi = read_examples(write_jsonl(tmp_path / "m.jsonl", [{"x": [[1, 2], [3, 4], [5, 6]], "y": "a"}]), "jsonl")
    assert multi.channels == 2 and multi.xs[0].tolist() == [[1, 2], [3, 4], [5, 6]]


def test_format_from_extension_or_config(tmp_path):
    assert file_format("a.jsonl") == "jsonl" and file_format("a.JSON") == "jsonl"
    assert file_format("b.csv") == "csv" and file_format("c.ts") == "ts"
    assert file_format("d.txt", "csv") == "csv"
    with pytest.raises(GrutrainError, match="data.format"):
        file_format("d.txt")


@pytest.mark.parametrize("name, content, needle", [
    ("no_y.jsonl", '{"x": "ab", "y": "A"}\n{"x": "cd"}\n', "line 2 has no label"),
    ("bad_json.jsonl", '{"x": "ab", "y": "A"}\n\n{"x": "cd", "y": \n', "line 3 is not valid JSON"),
    ("empty_text.jsonl", '{"x": "", "y": "A"}\n', "line 1 has an empty sequence"),
    ("empty_list.jsonl", '{"x": [], "y": "A"}\n', "line 1 has an empty sequence"),
    ("channels.jsonl", '{"x": [[1, 2], [3, 4]], "y": "A"}\n{"x": [[1, 2, 3]], "y": "B"}\n', "mismatched dimensions"),
    ("ragged.jsonl", '{"x": [[1, 2], [3]], "y": "A"}\n', "mismatched dimensions"),
    ("word.jsonl", '{"x": [1, "two", 3], "y": "A"}\n', '"two" is not a number'),
    ("kinds.jsonl", '{"x": "ab", "y": "A"}\n{"x": [1, 2], "y": "B"}\n', "one file holds one kind"),
    ("empty_label.csv", "label,v1,v2\nA,1,2\n,3,4\n", "line 3 has no label"),
    ("word.csv", "label,v1,v2\nA,1,x\n", "'x', which is not a number"),
    ("gap.csv", "label,v1,v2,v3\nA,1,,3\n", "blank between values"),
    ("empty.csv", "label,v1,v2\nA,,\n", "empty sequence"),
    ("no_label_col.csv", "cls,v1\nA,1\n", "no column 'label'"),
    ("no_data.ts", "@problemName x\n@classLabel true a b\n1,2:a\n", "line 3 comes before @data"),
    ("no_data_at_all.ts", "@problemName x\n@classLabel true a b\n", "no @data line"),
    ("dims.ts", "@dimensions 2\n@classLabel true a b\n@data\n1,2:3,4:a\n1,2:b\n", "line 5 has 1 dimension(s)"),
    ("dims_inferred.ts", "@classLabel true a b\n@data\n1,2:3,4:a\n1,2:3,4:5,6:b\n", "mismatched dimensions"),
    ("word.ts", "@univariate true\n@classLabel true a b\n@data\n1,x,3:a\n", "'x', which is not a number"),
    ("label.ts", "@univariate true\n@classLabel true a b\n@data\n1,2:c\n", "label 'c' is not among"),
    ("unlabelled.ts", "@classLabel false\n@data\n1,2\n", "no labels"),
    ("uneven.ts", "@dimensions 2\n@classLabel true a\n@data\n1,2,3:4,5:a\n", "different lengths"),
])
def test_bad_files_raise_a_one_line_error_naming_the_place(tmp_path, name, content, needle):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(GrutrainError) as info:
        read_examples(path, file_format(path))
    message = str(info.value)
    assert needle in message and "\n" not in message, message


# ---------------------------------------------------------------------------------------------
# Splits, labels, normalisation
# ---------------------------------------------------------------------------------------------

def test_stratified_split_is_deterministic_disjoint_and_keeps_each_label_share():
    labels = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    random.Random(5).shuffle(labels)
    train, val, test = stratified_split(labels, 0.1, 0.2, seed=3)
    assert sorted(train + val + test) == list(range(100))
    for part, share in ((val, 0.1), (test, 0.2)):
        counts = {k: sum(1 for i in part if labels[i] == k) for k in "abc"}
        assert counts == {"a": round(50 * share), "b": round(30 * share), "c": round(20 * share)}
    assert stratified_split(labels, 0.1, 0.2, seed=3) == (train, val, test)
    assert stratified_split(labels, 0.1, 0.2, seed=4) != (train, val, test)


def test_stratified_split_keeps_a_training_example_of_every_label():
    labels = ["a"] * 10 + ["rare"]
    train, val, test = stratified_split(labels, 0.3, 0.3, seed=0)
    assert 10 in train  # the only "rare" example trains
    assert {labels[i] for i in val + test} <= {labels[i] for i in train}


def test_labels_sort_numerically_when_they_are_numbers():
    assert sort_labels(["10", "2", "1", "2"]) == ["1", "2", "10"]
    assert sort_labels(["b", "10", "a"]) == ["10", "a", "b"]


def test_normalisation_and_labels_come_from_the_training_split_only(tmp_path, classify_config):
    rows = [{"x": [float(i), float(2 * i)], "y": "odd" if i % 2 else "even"} for i in range(40)]
    cfg = load_config(classify_config(write_jsonl(tmp_path / "s.jsonl", rows)))
    task = ClassifyTask.from_config(cfg, rows_per_step=cfg.train.batch_size)
    train, _, _ = stratified_split([r["y"] for r in rows], 0.25, 0.25, cfg.train.seed)
    values = torch.tensor([v for i in train for v in rows[i]["x"]], dtype=torch.float64)
    assert task.encoder.mean.tolist() == pytest.approx([values.mean().item()])
    assert task.encoder.std.tolist() == pytest.approx([values.std(unbiased=False).item()])
    assert task.encoder.labels == ["even", "odd"]
    # On resume the stored encoding is used as it is, not fitted again.
    state = task.state()
    state["encoder"]["mean"] = [123.0]
    resumed = ClassifyTask.from_config(cfg, rows_per_step=cfg.train.batch_size, saved={"task_state": state})
    assert resumed.encoder.mean.tolist() == [123.0]
    expected = (torch.tensor(rows[train[0]]["x"], dtype=torch.float64) - 123.0) / task.encoder.std
    assert resumed.splits["train"].xs[0][:, 0].tolist() == pytest.approx(expected.tolist(), abs=1e-5)


def test_text_vocabulary_is_built_on_the_training_split_with_unk_first(tmp_path, classify_config):
    rows = [{"x": "ab", "y": "A"}] * 6 + [{"x": "ba", "y": "B"}] * 6 + [{"x": "zq", "y": "A"}]
    cfg = load_config(classify_config(write_jsonl(tmp_path / "t.jsonl", rows)))
    task = ClassifyTask.from_config(cfg, rows_per_step=cfg.train.batch_size)
    vocab = task.encoder.vocab.tokens
    assert vocab[0] == "<unk>"
    train_chars = {c for x in task.splits["train"].xs for c in task.encoder.vocab.decode(x)}
    assert set(vocab[1:]) == train_chars - {"<unk>"}


def test_max_len_keeps_the_first_steps(tmp_path, classify_config):
    rows = [{"x": "abcdef", "y": "A"}, {"x": "ba", "y": "B"}] * 6
    cfg = load_config(classify_config(write_jsonl(tmp_path / "t.jsonl", rows), data={"max_len": 3}))
    task = ClassifyTask.from_config(cfg, rows_per_step=cfg.train.batch_size)
    decoded = {"".join(task.encoder.vocab.decode(x)) for x in task.splits["train"].xs}
    assert decoded == {"abc", "ba"}
    assert "d" not in task.encoder.vocab.tokens  # the vocabulary sees only what the model sees


# ---------------------------------------------------------------------------------------------
# Padding never changes a prediction
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["custom", "torch"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("inputs", ["tokens", "features"])
def test_an_example_alone_and_in_a_padded_batch_gives_the_same_logits(backend, bidirectional, num_layers, inputs):
    torch.manual_seed(num_layers + 2 * bidirectional)
    cfg = ModelConfig(embedding_dim=5, hidden_size=6, num_layers=num_layers, bidirectional=bidirectional,
                      backend=backend)
    if inputs == "tokens":
        model = SequenceModel(cfg, 3, vocab_size=7).eval()
        examples = [torch.randint(0, 7, (n,)) for n in (3, 8, 1, 5)]
    else:
        model = SequenceModel(cfg, 3, input_size=2).eval()
        examples = [torch.randn(n, 2) for n in (3, 8, 1, 5)]
    from grutrain.tasks.classify.examples import pad_batch

    batch, lengths = pad_batch(examples)
    with torch.no_grad():
        batched, _ = model(batch, None, lengths)
        for i, example in enumerate(examples):
            alone, _ = model(example.unsqueeze(0), None, torch.tensor([len(example)]))
            plain, _ = model(example.unsqueeze(0))  # no lengths at all
            torch.testing.assert_close(batched[i], alone[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(batched[i], plain[0], atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------

def test_accuracy_macro_f1_and_confusion_against_a_hand_computation():
    true = torch.tensor([0, 0, 0, 1, 1, 2])
    pred = torch.tensor([0, 0, 1, 1, 0, 0])
    c = confusion_matrix(pred, true, 4)
    assert c.tolist() == [[2, 1, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    accuracy, macro_f1 = accuracy_and_macro_f1(c)
    assert accuracy == pytest.approx(3 / 6)
    # F1 per present label: 0: P=2/4, R=2/3 -> 4/7; 1: P=1/2, R=1/2 -> 1/2; 2: 0. Label 3 is absent.
    assert macro_f1 == pytest.approx((4 / 7 + 1 / 2 + 0) / 3)


def test_majority_baseline_answers_the_most_frequent_training_label():
    enc = Encoder({"kind": "text", "labels": ["a", "b"], "train_counts": [3, 7], "vocab": ["<unk>"]})
    scores = majority_baseline(enc, torch.tensor([1, 1, 1, 0]))
    assert scores["majority_accuracy"] == pytest.approx(0.75)
    assert scores["majority_macro_f1"] == pytest.approx((2 * 3 / (4 + 3) + 0) / 2)
    assert scores["prior_loss"] == pytest.approx(-(3 * math.log(0.7) + math.log(0.3)) / 4)


def test_confusion_markdown_table():
    text = confusion_markdown(["female", "m"], [[10, 2], [3, 4]])
    assert text.splitlines() == [
        "| true \\ predicted | female | m |",
        "|------------------|--------|---|",
        "| female           | 10     | 2 |",
        "| m                | 3      | 4 |",
    ]


# ---------------------------------------------------------------------------------------------
# The shipped names data set and config
# ---------------------------------------------------------------------------------------------

def test_names_jsonl_is_the_census_lists_with_the_more_frequent_sex():
    def census(path):  # fixed width: the name, then the frequency
        return {line[:15].strip().lower(): float(line[15:21]) for line in path.read_text().splitlines() if line.strip()}

    male, female = census(ROOT / "data/dist.male.first"), census(ROOT / "data/dist.female.first")
    expected = {}
    for name in male.keys() | female.keys():
        m, f = male.get(name, 0.0), female.get(name, 0.0)
        if m != f:
            expected[name] = "male" if m > f else "female"
    shipped = [json.loads(line) for line in (ROOT / "data/names.jsonl").read_text().splitlines()]
    assert {r["x"]: r["y"] for r in shipped} == expected
    assert len(shipped) == len(expected)
    assert "mary" in expected and expected["mary"] == "female" and expected["james"] == "male"


def test_names_config_trains_a_few_steps(tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(ROOT)  # the config's data path is relative to the project
    code, out, err = run_cli(["fit", "configs/names.yaml", f"run.dir={tmp_path / 'names'}", "train.epochs=null",
                              "train.max_steps=2", "model.hidden_size=8", "train.eval_every=2", "--quiet"])
    assert code == 0, err
    summary = json.loads((tmp_path / "names" / "summary.json").read_text())
    assert summary["confusion_matrix"]["labels"] == ["female", "male"]
    assert summary["baselines"]["test/majority_accuracy"] > 0.7  # "female" is ~78% of the names


# ---------------------------------------------------------------------------------------------
# fit / eval / predict through the CLI
# ---------------------------------------------------------------------------------------------

def test_fit_writes_metrics_baselines_and_confusion_matrices(tmp_path, classify_config, run_cli):
    data = write_jsonl(tmp_path / "letters.jsonl", letter_examples())
    code, out, err = run_cli(["fit", classify_config(data), "--quiet"])
    assert code == 0, err
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    labels = ["A", "B", "C"]
    final = summary["final"]
    for split in ("val", "test"):
        assert {f"{split}/loss", f"{split}/accuracy", f"{split}/macro_f1"} <= final.keys()
        assert {f"{split}/majority_accuracy", f"{split}/majority_macro_f1"} <= summary["baselines"].keys()
    # 64 examples: A 22, B 32, C 10 -> a quarter of each in test: 6 + 8 + 2 (rounded half up: 5.5 -> 6, 2.5 -> 3).
    cm = summary["confusion_matrix"]
    assert cm["labels"] == labels and cm["split"] == "test"
    assert [sum(row) for row in cm["matrix"]] == [6, 8, 3]
    assert summary["baselines"]["test/majority_accuracy"] == pytest.approx(8 / 17)
    correct = sum(cm["matrix"][i][i] for i in range(3))
    assert final["test/accuracy"] == pytest.approx(correct / 17)
    tags = {json.loads(line)["tag"] for line in (run / "metrics.jsonl").read_text().splitlines()}
    assert {"val/loss", "val/accuracy", "val/macro_f1", "train/loss"} <= tags

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"tensors": 0}).Reload()
    texts = events.Tensors("confusion_matrix/text_summary")
    assert [t.step for t in texts] == [3, 6]
    table = texts[-1].tensor_proto.string_val[0].decode()
    assert "true \\ predicted | A" in table and table.count("\n") == 4

    # eval of the last checkpoint on the stored test split: the summary's final test metrics.
    code, out, err = run_cli(["eval", run / "checkpoints/last.pt", "--split", "test", "--json"])
    assert code == 0, err
    result = json.loads(out)
    assert result["examples"] == 17 and result["split"] == "test"
    for name in ("loss", "accuracy", "macro_f1"):
        assert result[name] == pytest.approx(final[f"test/{name}"], abs=1e-6)
    assert result["confusion_matrix"]["matrix"] == cm["matrix"]
    assert result["baseline/majority_accuracy"] == pytest.approx(8 / 17)

    # eval --data: every example of another file, scored by hand from predict's labels.
    other = write_jsonl(tmp_path / "other.jsonl", letter_examples(12, seed=9))
    code, out, err = run_cli(["eval", run / "checkpoints/last.pt", "--data", other, "--json"])
    assert code == 0, err
    result = json.loads(out)
    code, pred_out, err = run_cli(["predict", run / "checkpoints/last.pt", "--input", other])
    assert code == 0, err
    rows = [json.loads(line) for line in pred_out.splitlines()]
    assert result["examples"] == 12 == len(rows)
    assert result["accuracy"] == pytest.approx(sum(r["label"] == r["y"] for r in rows) / 12)


def test_predict_gives_labels_and_probabilities_and_echoes_y(tmp_path, classify_config, run_cli):
    data = write_jsonl(tmp_path / "letters.jsonl", letter_examples())
    assert run_cli(["fit", classify_config(data, train={"max_steps": 3}), "--quiet"])[0] == 0
    ckpt = tmp_path / "run/checkpoints/last.pt"
    unlabelled = write_jsonl(tmp_path / "new.jsonl", [{"x": "ayy"}, {"x": "b"}, {"x": "c?!"}])
    code, out, err = run_cli(["predict", ckpt, "--input", unlabelled])
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2]
    for r in rows:
        assert set(r) == {"index", "label", "probabilities"}
        assert list(r["probabilities"]) == ["A", "B", "C"]
        assert sum(r["probabilities"].values()) == pytest.approx(1, abs=1e-5)
        assert r["label"] == max(r["probabilities"], key=r["probabilities"].get)
    # The model alone, by hand: the same probabilities for the first example.
    from grutrain.tasks.checkpoints import open_checkpoint

    opened = open_checkpoint(ckpt, torch.device("cpu"))
    model = opened.model
    vocab = opened.payload["task_state"]["encoder"]["vocab"]
    ids = torch.tensor([[vocab.index(c) if c in vocab else 0 for c in "ayy"]])
    with torch.no_grad():
        probs = model(ids)[0].softmax(dim=1)[0]
    assert [rows[0]["probabilities"][k] for k in "ABC"] == pytest.approx(probs.tolist(), abs=1e-5)

    labelled = write_jsonl(tmp_path / "lab.jsonl", [{"x": "ab", "y": "A"}, {"x": "ba", "y": "B"}])
    out_csv = tmp_path / "pred.csv"
    code, out, err = run_cli(["predict", ckpt, "--input", labelled, "--output", out_csv])
    assert code == 0, err
    lines = out_csv.read_text().splitlines()
    assert lines[0] == "index,y,label,probabilities"
    assert lines[1].startswith("0,A,") and json.loads(lines[1].split(",", 3)[3].strip('"').replace('""', '"'))


def test_variable_length_multivariate_ts_trains_and_predicts(tmp_path, classify_config, run_cli):
    rng = random.Random(0)
    lines = ["@problemName Synth", "@univariate false", "@dimensions 2", "@equalLength false",
             "@classLabel true rise fall", "@data"]
    for i in range(24):
        n = rng.randint(2, 9)
        sign = 1 if i % 2 else -1
        dims = [",".join(f"{sign * t + rng.random():.3f}" for t in range(n)),
                ",".join("?" if rng.random() < 0.1 else f"{rng.random():.3f}" for _ in range(n))]
        lines.append(":".join(dims) + (":rise" if sign > 0 else ":fall"))
    data = tmp_path / "synth.ts"
    data.write_text("\n".join(lines) + "\n")
    code, _, err = run_cli(["fit", classify_config(data, model={"bidirectional": False, "num_layers": 2}), "--quiet"])
    assert code == 0, err
    code, out, err = run_cli(["predict", tmp_path / "run/checkpoints/best.pt", "--input", data, "--format", "jsonl"])
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 24 and {r["y"] for r in rows} == {"rise", "fall"}
    # Resume the finished run for more steps: it continues from the stored encoding.
    code, _, err = run_cli(["fit", classify_config(data, model={"bidirectional": False, "num_layers": 2},
                                                   train={"max_steps": 8}), "--resume", "--quiet"])
    assert code == 0, err
    assert json.loads((tmp_path / "run/summary.json").read_text())["step"] == 8


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path, classify_config, run_cli):
    data = write_jsonl(tmp_path / "letters.jsonl", letter_examples())
    # A constant learning rate, so that the schedule does not depend on max_steps;
    # 9 steps cross an epoch (30 training examples, batches of 4).
    common = dict(optim={"schedule": "constant"}, model={"dropout": 0.2, "bidirectional": True})
    whole = classify_config(data, "whole.yaml", run={"dir": str(tmp_path / "whole")}, train={"max_steps": 9},
                            **common)
    assert run_cli(["fit", whole, "--quiet"])[0] == 0
    part = classify_config(data, "part.yaml", run={"dir": str(tmp_path / "part")}, train={"max_steps": 3}, **common)
    assert run_cli(["fit", part, "--quiet"])[0] == 0
    more = classify_config(data, "more.yaml", run={"dir": str(tmp_path / "part")}, train={"max_steps": 9}, **common)
    assert run_cli(["fit", more, "--resume", "--quiet"])[0] == 0
    a = json.loads((tmp_path / "whole/summary.json").read_text())["final"]
    b = json.loads((tmp_path / "part/summary.json").read_text())["final"]
    assert b == pytest.approx(a, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Bad input through the CLI: exit 1, one line, no traceback
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, content, needles", [
    ("no_y.jsonl", '{"x": "ab", "y": "A"}\n{"x": "cd"}\n', ["line 2 has no label"]),
    ("bad.jsonl", '{"x": "ab", "y": "A"}\n{"x": "cd", "y": "B"\n', ["line 2 is not valid JSON"]),
    ("empty.jsonl", '{"x": "ab", "y": "A"}\n{"x": "", "y": "B"}\n', ["line 2 has an empty sequence"]),
    ("dims.jsonl", '{"x": [[1, 2]], "y": "A"}\n{"x": [[1]], "y": "B"}\n', ["line 2", "mismatched dimensions"]),
    ("nan.jsonl", '{"x": [1, null], "y": "A"}\n', ["line 1", "null is not a number"]),
    ("empty_label.csv", "label,v1\nA,1\n ,2\n", ["line 3 has no label"]),
    ("text.csv", "label,v1,v2\nA,1,2\nB,3,four\n", ["line 3", "'four', which is not a number"]),
    ("dims.ts", "@dimensions 2\n@classLabel true a b\n@data\n1:2:a\n1:b\n", ["line 5 has 1 dimension(s)"]),
    ("nodata.ts", "@problemName x\n@classLabel true a\n", ["no @data line"]),
])
def test_bad_training_data_exits_1_with_one_line(tmp_path, classify_config, run_cli, name, content, needles):
    data = tmp_path / name
    data.write_text(content)
    code, out, err = run_cli(["fit", classify_config(data), "--quiet"])
    assert_one_line_error(code, err, str(data), *needles)
    assert not (tmp_path / "run").exists()  # nothing started


def test_unknown_labels_and_mismatched_inputs_at_predict_and_eval(tmp_path, classify_config, run_cli):
    data = write_jsonl(tmp_path / "letters.jsonl", letter_examples())
    assert run_cli(["fit", classify_config(data, train={"max_steps": 2}), "--quiet"])[0] == 0
    ckpt = tmp_path / "run/checkpoints/last.pt"
    unseen = write_jsonl(tmp_path / "unseen.jsonl", [{"x": "ab", "y": "A"}, {"x": "dd", "y": "D"}])
    for command in (["predict", ckpt, "--input", unseen], ["eval", ckpt, "--data", unseen, "--json"]):
        code, out, err = run_cli(command)
        assert_one_line_error(code, err, "line 2", "'D' was never seen in training", "'A', 'B', 'C'")
    unlabelled = write_jsonl(tmp_path / "unlabelled.jsonl", [{"x": "ab"}])
    code, out, err = run_cli(["eval", ckpt, "--data", unlabelled, "--json"])
    assert_one_line_error(code, err, "line 1 has no label")
    numeric = write_jsonl(tmp_path / "numeric.jsonl", [{"x": [1, 2], "y": "A"}])
    code, out, err = run_cli(["predict", ckpt, "--input", numeric])
    assert_one_line_error(code, err, "numeric series with 1 channel(s)", "trained on text", "mismatched dimensions")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"x": "ab"}\n{"x": \n')
    code, out, err = run_cli(["predict", ckpt, "--input", broken])
    assert_one_line_error(code, err, "line 2 is not valid JSON")
    code, out, err = run_cli(["predict", ckpt, "--input", tmp_path / "missing.jsonl"])
    assert_one_line_error(code, err, "--input", "not found")


def test_predict_with_a_series_of_the_wrong_channel_count(tmp_path, classify_config, run_cli):
    ts = tmp_path / "tiny.ts"
    ts.write_text(TS_MULTIVARIATE.replace("7:70:up", "7:70:up\n" + "\n".join(["1,2:3,4:up", "4,3:2,1:down"] * 4)))
    assert run_cli(["fit", classify_config(ts, train={"max_steps": 2, "batch_size": 2}), "--quiet"])[0] == 0
    one_channel = tmp_path / "one.csv"
    one_channel.write_text("label,v1,v2\nup,1,2\n")
    code, out, err = run_cli(["predict", tmp_path / "run/checkpoints/last.pt", "--input", one_channel])
    assert_one_line_error(code, err, "1 channel(s)", "trained on numeric series with 2 channel(s)")
