"""`data inspect` counts what the shards hold and shows one decoded sample."""

from PIL import Image

from rewarddance.cli import main
from rewarddance.data.schema import Sample
from rewarddance.data.writer import SampleWriter


def _write(folder):
    red, blue = Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")
    with SampleWriter(folder, max_count=3) as writer:
        for i, label in enumerate(["first", "second", "tie", "first"]):
            writer.write(
                Sample(
                    key=f"p{i}", kind="pair", prompt="a red square", first=[red], second=[blue],
                    references=[[red]] if i % 2 == 0 else [], label=label, category="colors", source="test",
                )
            )  # fmt: skip
        writer.write(Sample(key="q0", kind="point", prompt="a blue square", image=[blue], answer="yes", rationale="ok"))
        writer.write(Sample(key="v0", kind="point", prompt="a moving square", image=[red, blue], answer="no", fps=4.0))


def test_inspect_counts_and_example(tmp_path, capsys):
    _write(tmp_path)
    summary = main(["data", "inspect", str(tmp_path)]).result
    assert summary.total == 6
    assert len(summary.shards) == 2
    assert summary.kinds == {"pair": 4, "point": 2}
    assert summary.labels == {"first": 2, "second": 1, "tie": 1}
    assert summary.answers == {"yes": 1, "no": 1}
    assert summary.categories["colors"] == 4
    assert summary.with_references == 2
    assert summary.with_rationale == 1
    assert summary.videos == 1
    assert summary.example.key == "p0" and summary.example.first[0].getpixel((0, 0)) == (255, 0, 0)
    out = capsys.readouterr().out
    assert "(ties: 1)" in out
    assert out.strip().splitlines()[-1] == f"inspected 6 samples in 2 shards of {tmp_path}"
