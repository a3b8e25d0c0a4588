"""Build data/names.jsonl (first name -> sex) from the 1990 US Census first-name lists.

    python scripts/make_names.py            # reads data/dist.{male,female}.first, writes data/names.jsonl

The census files are fixed-width: NAME FREQ CUMFREQ RANK, FREQ being the percentage of the
people of that sex who have the name. A name in both lists takes the label of the list where its
frequency is higher; a name with equal frequencies in both is dropped (no label to learn).
Names are lowercased; the output is sorted by name, one {"x": "mary", "y": "female"} per line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data"


def read_census(path: Path) -> dict[str, float]:
    """{lowercased name: frequency in percent} from one census list."""
    names: dict[str, float] = {}
    for number, line in enumerate(path.read_text(encoding="ascii").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 4:
            raise SystemExit(f"{path}:{number}: expected NAME FREQ CUMFREQ RANK, got {line!r}")
        names[fields[0].lower()] = float(fields[1])
    return names


def label_names(male: dict[str, float], female: dict[str, float]) -> tuple[dict[str, str], list[str]]:
    """({name: "male" | "female"}, the names dropped because both lists give them the same frequency)."""
    labels, dropped = {}, []
    for name in sorted(male.keys() | female.keys()):
        m, f = male.get(name, 0.0), female.get(name, 0.0)
        if m == f:
            dropped.append(name)
        else:
            labels[name] = "male" if m > f else "female"
    return labels, dropped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--male", type=Path, default=DATA / "dist.male.first")
    parser.add_argument("--female", type=Path, default=DATA / "dist.female.first")
    parser.add_argument("--output", type=Path, default=DATA / "names.jsonl")
    args = parser.parse_args()
    male, female = read_census(args.male), read_census(args.female)
    labels, dropped = label_names(male, female)
    args.output.write_text("".join(json.dumps({"x": name, "y": sex}) + "\n" for name, sex in labels.items()))
    counts = {sex: sum(1 for s in labels.values() if s == sex) for sex in ("female", "male")}
    print(f"{args.output}: {len(labels)} names ({counts['female']} female, {counts['male']} male); "
          f"{len(male.keys() & female.keys())} in both lists, {len(dropped)} dropped as ties: {', '.join(dropped)}")


if __name__ == "__main__":
    main()
