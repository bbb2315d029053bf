"""Latency tables: DP1 reproduces the shipped opt_time files; CSV and JSON round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
from solver_helpers import NETS, paper_table

from depthfx.solver import LatencyTable, OptimalLatencyTable


@pytest.mark.parametrize("net", sorted(NETS))
def test_dp1_reproduces_shipped_opt_time(data_dir: Path, net: str) -> None:
    ours = LatencyTable.read_csv(paper_table(data_dir, net, "time")).optimal()
    shipped = OptimalLatencyTable.read_csv(paper_table(data_dir, net, "opt_time"))
    assert list(ours.times) == list(shipped.times)
    assert len(ours.times) == {"vgg19_no_trt": 36}.get(net, 171)
    for key, t in shipped.times.items():
        assert ours.times[key] == pytest.approx(t, rel=1e-12, abs=0)
        assert ours.stdevs[key] == pytest.approx(shipped.stdevs[key], rel=1e-12, abs=0)
        assert ours.splits[key] == shipped.splits[key]
    # sanity: the recurrence really splits blocks (60 of 171 on MBV2-1.0, spec §2.4)
    raw = LatencyTable.read_csv(paper_table(data_dir, net, "time"))
    split = sum(len(b) > 2 for b in ours.splits.values())
    assert split == sum(ours.times[k] < raw.times[k] for k in raw.times)
    if net == "mbv2_1.0":
        assert split == 60
        assert ours.splits[0, 48, 50] == (48, 49, 50)


def test_csv_round_trips(data_dir: Path, tmp_path: Path) -> None:
    lat = LatencyTable.read_csv(paper_table(data_dir, "mbv2_1.0", "time"))
    lat.write_csv(tmp_path / "time.csv")
    again = LatencyTable.read_csv(tmp_path / "time.csv")
    assert again.times == lat.times and again.stdevs == lat.stdevs
    opt = lat.optimal()
    opt.write_csv(tmp_path / "opt.csv")
    text = (tmp_path / "opt.csv").read_text().splitlines()
    assert text[0] == "id,st,end,time,stdev,breaks"
    assert text[1].endswith(',"0,1"')
    back = OptimalLatencyTable.read_csv(tmp_path / "opt.csv")
    assert (back.times, back.stdevs, back.splits) == (opt.times, opt.stdevs, opt.splits)
    # the shipped opt_time file reads back the same way
    shipped = OptimalLatencyTable.read_csv(paper_table(data_dir, "mbv2_1.0", "opt_time"))
    assert shipped.splits == opt.splits
    # multi-chain tables gain a chain column
    multi = LatencyTable.from_entries({(0, 0, 1): 1.0, (1, 0, 1): (2.0, 0.5)})
    multi.write_csv(tmp_path / "multi.csv")
    assert (tmp_path / "multi.csv").read_text().splitlines()[0] == "id,chain,st,end,time,stdev"
    assert LatencyTable.read_csv(tmp_path / "multi.csv").times == multi.times


def test_json_round_trips_with_meta(data_dir: Path, tmp_path: Path) -> None:
    meta = {"backend": "onnxruntime", "device": "cpu", "batch": 1, "fingerprint": "abc123"}
    lat = LatencyTable.read_csv(paper_table(data_dir, "vgg19_no_trt", "time"), meta=meta)
    lat.write_json(tmp_path / "lat.json")
    back = LatencyTable.read_json(tmp_path / "lat.json")
    assert back.meta == meta and back.times == lat.times and back.stdevs == lat.stdevs
    opt = lat.optimal()
    opt.write_json(tmp_path / "opt.json")
    ob = OptimalLatencyTable.read_json(tmp_path / "opt.json")
    assert (ob.times, ob.splits, ob.meta) == (opt.times, opt.splits, meta)
