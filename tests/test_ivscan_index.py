"""The index of past IV scans (`/dcs/ivscan/results`), from the results folder, in-process."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from trackerdcs.ivscan import index
from trackerdcs.ivscan.index import result_entry, scan_index


def write_scan(root: Path, module: str, scan: str, start: str, png: bool = True, **meta) -> Path:
    folder = root / module
    folder.mkdir(parents=True, exist_ok=True)
    head = {"scan": scan, "module": module, "channel": f"hv_{module.lower()}",
            "operator": "alice", "start_time": start, "end_time": "", "outcome": "completed",
            "reason": "completed 3 steps", "steps": 3, "recipe": "", **meta}  # fmt: skip
    text = "# trackerdcs IV scan (units: V, uA, C, % RH; time: unix s)\n"
    text += "".join(f"# {k}: {v}\n" for k, v in head.items())
    text += "step,time,vset,vmon,imon\n1,1.0,10,10,0.5\n"
    path = folder / f"{scan}.csv"
    path.write_text(text)
    if png:
        path.with_suffix(".png").write_bytes(b"\x89PNG")
    return path


def test_the_index_lists_every_scan_newest_first_with_its_files(tmp_path: Path) -> None:
    write_scan(tmp_path, "M1", "M1-a", "2024-05-01T08:00:00.000Z")
    write_scan(tmp_path, "M2", "M2-b", "2024-05-01T09:00:00.000Z", png=False,
               recipe="burnin-1", end_time="2024-05-01T09:10:00.500Z")  # fmt: skip
    (tmp_path / "M1" / "notes.csv").write_text("not a scan\n")  # a foreign file: left out
    (tmp_path / "M1" / "broken.csv").write_bytes(b"# scan: \xff\xfe\n")
    entries = scan_index(tmp_path)
    assert [e["scan"] for e in entries] == ["M2-b", "M1-a"]
    m2, m1 = entries
    assert m2["recipe"] == "burnin-1" and m2["png"] is None and m2["csv"] == "M2/M2-b.csv"
    assert m2["ended"] == 1714554600.5 and m2["started"] == 1714554000.0
    assert m1["png"] == "M1/M1-a.png" and m1["recipe"] is None and m1["ended"] is None
    assert m1["steps"] == 3 and m1["operator"] == "alice" and m1["channel"] == "hv_m1"


def test_the_index_is_bounded_and_empty_without_a_folder(tmp_path: Path, monkeypatch) -> None:
    assert scan_index(tmp_path / "none") == []
    monkeypatch.setattr(index, "LIMIT", 3)
    for i in range(5):
        write_scan(tmp_path, "M1", f"M1-{i}", f"2024-05-01T08:00:0{i}.000Z")
    assert [e["scan"] for e in scan_index(tmp_path)] == ["M1-4", "M1-3", "M1-2"]


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=300))
def test_any_file_content_gives_an_entry_or_none(tmp_path_factory, content: bytes) -> None:
    root = tmp_path_factory.mktemp("idx")
    path = root / "M1" / "M1-x.csv"
    path.parent.mkdir()
    path.write_bytes(content)
    entry = result_entry(path, root)
    assert entry is None or (entry["scan"] == "M1-x" and entry["steps"] >= 0)
