"""benchmarks/federated.py (v2): each row runs what it claims, parts merge into the issue's shape, one tiny part end
to end (a real `fedgckd simulate` subprocess, its ledger and bytes read back)."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import federated  # noqa: E402
import federated_merge  # noqa: E402
import federated_rows  # noqa: E402
from federated_rows import PRESETS, simulate_command  # noqa: E402


def flags(cmd: list[str]) -> dict[str, str]:
    """`--flag value` pairs of a command line (each flag once, as simulate_command writes them, except --set)."""
    i = cmd.index("simulate") + 1
    out = {}
    while i < len(cmd):
        out.setdefault(cmd[i], []).append(cmd[i + 1])
        i += 2
    return {k: v[0] if len(v) == 1 else v for k, v in out.items()}


# what each row claims in its name, written out by hand: (mode, privacy, epsilon)
CLAIMED = {
    "fed_full_none": ("full", "none", None),
    "fed_grouped_none": ("grouped", "none", None),
    "fed_grouped_record_eps1": ("grouped", "record", "1"),
    "fed_grouped_record_eps4": ("grouped", "record", "4"),
    "fed_grouped_record_eps8": ("grouped", "record", "8"),
    "fed_per_record_record_eps8": ("per-record", "record", "8"),
    "fed_full_site_eps8": ("full", "site", "8"),
}


@pytest.mark.parametrize("row", sorted(CLAIMED))
def test_each_federated_row_runs_simulate_as_its_name_says(row, tmp_path):
    cmd = simulate_command(row, data=Path("data/sites"), teacher=Path("t"), target="shaded", sites=10, rounds=7, seed=2,
                           out=tmp_path / "run", sets=["server-optimizer=fedavgm", "anchors=64"])
    assert cmd[1:4] == ["-m", "fedgckd", "simulate"]
    f = flags(cmd)
    mode, privacy, eps = CLAIMED[row]
    assert (f["--mode"], f["--privacy"], f.get("--epsilon")) == (mode, privacy, eps)
    assert f["--delta"] == "1e-05" and float(f["--delta"]) == 1e-5
    assert (f["--data"], f["--target"], f["--sites"], f["--rounds"], f["--seed"]) == ("data/sites", "shaded", "10", "7", "2")
    assert f["--partition"] == "dirichlet" and f["--out"] == str(tmp_path / "run")
    assert f["--state-dir"] != f["--out"] and not f["--state-dir"].startswith(f["--out"] + "/")
    assert f["--set"] == ["server-optimizer=fedavgm", "anchors=64"]
    assert "--engine" not in f, "Ray, simulate's own default, unless asked"
    # the no-privacy and the per-record rows run the presets their settings were chosen for on val
    assert {"fed_full_none", "fed_per_record_record_eps8"} == set(PRESETS)
    if row in PRESETS:  # these rows run a shipped preset, which says the same mode, privacy and epsilon
        assert Path(f["--config"]) == PRESETS[row] and PRESETS[row].exists()
        assert PRESETS[row].parent.parts[-2:] == ("simulations", "configs")
        preset = tomllib.loads(PRESETS[row].read_text())["run-config"]
        assert (preset["mode"], preset["privacy"]) == (mode, privacy)
        assert eps is None or float(preset["epsilon"]) == float(eps)
        from common.federation.config import FedConfig

        FedConfig.from_run_config(preset).validate()  # every key of the preset is a valid run-config key
    else:
        assert "--config" not in f
    inproc = flags(simulate_command(row, data=Path("d"), teacher=Path("t"), target="x", sites=2, rounds=1, seed=0,
                                    out=tmp_path / "run", engine="inprocess"))
    assert inproc["--engine"] == "inprocess"


def test_a_tag_names_val_studies_only(capsys):
    import federated

    with pytest.raises(SystemExit):
        federated.main(["--split", "test", "--tag", "x"])
    assert "--tag names val studies" in capsys.readouterr().err


def test_the_row_table_is_the_issues_and_a_central_row_is_not_simulated():
    assert set(federated_rows.FED_ROWS) == set(CLAIMED)
    assert federated_rows.CENTRAL_ROWS == ("direct", "central_full", "central_grouped_dp_eps8")
    with pytest.raises(KeyError, match="not a federated row"):
        simulate_command("central_full", data=Path("d"), teacher=Path("t"), target="x", sites=2, rounds=1, seed=0,
                         out=Path("o"))


def _row(r1, m, eps=None, **extra):
    row = {"R1": r1, "mAP": m, **extra}
    if eps is not None:
        row |= {"epsilon": eps, "epsilon_unit": "record", "delta": 1e-5, "accountant": "rdp", "within_budget": True}
    return row


def _write(folder: Path, name: str, **part):
    base = {"split": "test", "command": f"python benchmarks/federated.py # {name}", "machine": {}}
    (folder / f"{name}.json").write_text(json.dumps(base | part))


def test_merge_gives_hand_computed_means_and_ignores_val_parts(tmp_path):
    _write(tmp_path, "a", profile="sites", pair="flat->outline", seed=0, dp_step={"ratio": 1.2},
           rows={"direct": _row(10.0, 8.0), "central_full": _row(60.0, 50.0),
                 "fed_grouped_record_eps8": _row(20.0, 15.0, 7.9, bytes_per_site_round=1000, full_model_bytes=100_000)})
    _write(tmp_path, "b", profile="sites", pair="flat->outline", seed=1, dp_step={"ratio": 1.4},
           rows={"direct": _row(12.0, 10.0), "central_full": _row(64.0, 52.0),
                 "fed_grouped_record_eps8": _row(30.0, 25.0, 7.95, bytes_per_site_round=1000, full_model_bytes=100_000)})
    _write(tmp_path, "c_val", profile="sites", pair="flat->outline", seed=2, split="val",
           rows={"direct": _row(99.0, 99.0)})
    out = federated_merge.merge(federated_merge.load_parts(tmp_path))
    rows = out["runs"]["sites"]["flat->outline"]
    assert list(rows) == ["direct", "central_full", "fed_grouped_record_eps8"]
    # by hand: means (10+12)/2, (60+64)/2, (20+30)/2; sample std of (20, 30) = sqrt(50) = 7.07
    assert rows["direct"] == {"R1": 11.0, "R1_std": 1.41, "mAP": 9.0, "mAP_std": 1.41, "epsilon": None, "seeds": [0, 1]}
    g = rows["fed_grouped_record_eps8"]
    assert (g["R1"], g["R1_std"], g["mAP"], g["epsilon"]) == (25.0, 7.07, 20.0, 7.95)
    assert (g["epsilon_unit"], g["delta"], g["accountant"], g["within_budget"]) == ("record", 1e-5, "rdp", True)
    # share of central_full's gain over direct: (25 - 11) / (62 - 11)
    assert out["share_of_central_gain"]["sites"]["flat->outline"]["fed_grouped_record_eps8"] == round(14 / 51, 3)
    assert (out["bytes_per_site_round"], out["full_model_bytes"], out["dp_step_ratio"]) == (1000, 100_000, 1.4)
    assert len(out["commands"]) == 2  # the val part's command is not among them
    assert "7.95 (record-level, delta 1e-05, RDP)" in federated_merge.markdown(out)


def test_a_row_on_fewer_seeds_is_compared_with_the_reference_rows_of_its_own_seeds(tmp_path):
    for seed, (d, c, extra) in enumerate([(10.0, 60.0, {"fed_per_record_record_eps8": _row(20.0, 15.0, 8.0)}),
                                          (14.0, 70.0, {}), (12.0, 62.0, {})]):
        _write(tmp_path, f"s{seed}", profile="sites", pair="flat->outline", seed=seed,
               rows={"direct": _row(d, 1.0), "central_full": _row(c, 1.0), "fed_full_none": _row(c - 5, 1.0)} | extra)
    out = federated_merge.merge(federated_merge.load_parts(tmp_path))
    share = out["share_of_central_gain"]["sites"]["flat->outline"]
    # seed 0 only: (20 - 10) / (60 - 10); against the three-seed means it would read (20 - 12) / (64 - 12)
    assert share["fed_per_record_record_eps8"] == 0.2
    # all three seeds: means 12, 64 and 59 -> (59 - 12) / (64 - 12)
    assert share["fed_full_none"] == round(47 / 52, 3)
    # a row on a seed without reference rows gets no share
    _write(tmp_path, "s3", profile="sites", pair="flat->outline", seed=3, rows={"fed_full_site_eps8": _row(1.0, 1.0)})
    out = federated_merge.merge(federated_merge.load_parts(tmp_path))
    assert "fed_full_site_eps8" not in out["share_of_central_gain"]["sites"]["flat->outline"]


def test_merge_refuses_seeds_that_disagree_on_the_privacy_claim_or_the_settings(tmp_path):
    a = _row(20.0, 15.0, 7.9)
    _write(tmp_path, "a", profile="default", pair="flat->outline", seed=0, rows={"fed_grouped_record_eps8": a})
    _write(tmp_path, "b", profile="default", pair="flat->outline", seed=1,
           rows={"fed_grouped_record_eps8": a | {"accountant": "prv"}})
    with pytest.raises(ValueError, match="disagree on accountant"):
        federated_merge.merge(federated_merge.load_parts(tmp_path))
    _write(tmp_path, "b", profile="default", pair="flat->outline", seed=1,
           rows={"fed_grouped_record_eps8": a | {"settings": {"rounds": 3}}})
    with pytest.raises(ValueError, match="different settings"):
        federated_merge.merge(federated_merge.load_parts(tmp_path))


@pytest.fixture
def parts_here(tmp_path, monkeypatch):
    monkeypatch.setattr(federated, "PARTS", tmp_path / "parts")
    monkeypatch.setattr(federated, "RESULTS", tmp_path)
    monkeypatch.setattr(federated, "write", lambda name, payload, md: (tmp_path / f"{name}.json").write_text(
        json.dumps(payload)) or (tmp_path / f"{name}.md").write_text(md))
    return tmp_path


def test_a_later_part_replaces_the_rows_it_holds_and_keeps_the_others(parts_here, monkeypatch):
    values = {"direct": _row(10.0, 8.0), "central_full": _row(60.0, 50.0)}
    monkeypatch.setattr(federated, "ensure_data", lambda d, profile="default": d)
    monkeypatch.setattr(federated, "build_backbone", lambda name: None)
    monkeypatch.setattr(federated, "features", lambda *a, **k: None)
    monkeypatch.setattr(federated, "teacher_for", lambda *a: Path("teacher"))
    monkeypatch.setattr(federated, "load_checkpoint", lambda p: type("C", (), {"heads": None}))
    monkeypatch.setattr(federated.PublicBank, "from_source", lambda *a, **k: None)
    monkeypatch.setattr(federated, "central_rows", lambda *a: {r: values[r] for r in a[-1]})
    args = ["--profile", "default", "--pairs", "flat:outline", "--seeds", "0", "--runs", "direct", "central_full"]
    federated.main(args)
    values = {"direct": _row(99.0, 99.0), "central_full": _row(70.0, 55.0)}  # a rerun of central_full only
    federated.main(args[:-2] + ["central_full"])
    part = json.loads((parts_here / "parts" / "default_flat_outline_s0.json").read_text())
    assert part["rows"] == {"direct": _row(10.0, 8.0), "central_full": _row(70.0, 55.0)}
    assert len(part["commands"]) == 2
    federated.main(["--merge"])
    merged = json.loads((parts_here / "federated.json").read_text())
    assert merged["runs"]["default"]["flat->outline"]["central_full"]["R1"] == 70.0
    assert (parts_here / "federated.svg").read_text().lstrip().startswith("<?xml")


@pytest.mark.slow
def test_one_tiny_part_end_to_end_with_the_source_in_another_folder(parts_here, monkeypatch, tmp_path):
    """The sites profile's situation on the tiny benchmark: the target folder holds no source domain, so simulate
    finds the source through the teacher checkpoint. One federated row through a real `fedgckd simulate`; the part's
    figures are checked against the run folder and a second evaluation of its model."""
    import shutil

    from fed_support import SOURCE, TARGET, shared_bench

    from common.atomic import read_json
    from common.checkpoint import load_checkpoint
    from common.models.backbones import build_backbone
    from common.pipeline import domain_features
    from common.train.pretrain import evaluate_heads

    bench = shared_bench()
    targets = tmp_path / "targets"  # the target domain only, as data/sites holds no `flat`
    shutil.copytree(bench.data / TARGET, targets / TARGET)
    assert not (targets / SOURCE).exists()
    monkeypatch.setattr(federated, "ensure_data", lambda d, profile="default": d)
    work = tmp_path / "work"
    federated.main(["--profile", "sites", "--data", str(bench.data), "--sites-data", str(targets), "--backbone", "tiny",
                    "--pairs", f"{SOURCE}:{TARGET}", "--seeds", "0", "--runs", "direct", "fed_grouped_record_eps8",
                    "--teacher", str(bench.teacher), "--cache", str(bench.cache), "--work", str(work), "--sites", "3",
                    "--rounds", "2", "--cpus", "1", "--set", "anchors=64", "--set", "prototypes=4", "--set",
                    "batch-size=8", "--set", "local-steps=3", "--set", "sample-rate=0.5", "--set", "group-size=3"])
    part = json.loads((parts_here / "parts" / f"sites_{SOURCE}_{TARGET}_s0.json").read_text())
    assert (part["profile"], part["pair"], part["seed"], part["split"]) == ("sites", f"{SOURCE}->{TARGET}", 0, "test")
    run = work / f"sites_{SOURCE}_{TARGET}_s0" / "fed_grouped_record_eps8"
    ledger, metrics = read_json(run / "ledger.json"), read_json(run / "metrics.json")
    row = part["rows"]["fed_grouped_record_eps8"]
    assert metrics["config"]["mode"] == "grouped" and metrics["config"]["privacy"] == "record"
    assert metrics["config"]["data-dir"] == str(targets) and metrics["source"]["domain"] == SOURCE
    assert row["epsilon"] == round(max(ledger["final_epsilon"].values()), 3) and 0 < row["epsilon"] <= 8
    assert (row["epsilon_unit"], row["delta"], row["accountant"], row["within_budget"]) == ("record", 1e-5, "rdp", True)
    assert row["bytes_per_site_round"] == metrics["model_bytes"]["update_bytes"] > 0
    assert row["settings"] == {"sites": 3, "rounds": 2, "set": ["anchors=64", "prototypes=4", "batch-size=8",
                                                                 "local-steps=3", "sample-rate=0.5", "group-size=3"]}
    test = domain_features(build_backbone("tiny"), targets, TARGET, "test", cache_dir=bench.cache)
    again = evaluate_heads(load_checkpoint(run / "model").heads, test)
    assert (row["R1"], row["mAP"]) == (pytest.approx(again["R1"]), pytest.approx(again["mAP"]))
    assert part["rows"]["direct"]["R1"] == pytest.approx(evaluate_heads(load_checkpoint(bench.teacher).heads, test)["R1"])
    train = domain_features(build_backbone("tiny"), targets, TARGET, "train", cache_dir=bench.cache)
    assert part["dp_step"]["ratio"] > 0 and part["dp_step"]["records"] == len(train.image_feats) // 3  # a site's share


def test_the_readme_block_of_a_merged_v2_result(tmp_path, monkeypatch):
    """A merged result of both profiles and pairs: the block shows the sites profile, a column group per pair, and
    links the plot and federated.md relative to the file it sits in."""
    import readme_tables
    import table_common

    results = tmp_path / "benchmarks" / "results"
    parts = tmp_path / "parts"
    parts.mkdir(parents=True)
    results.mkdir(parents=True)
    for profile, base in (("sites", 0.0), ("default", 100.0)):
        for tgt, off in (("outline", 0.0), ("shaded", 1.0)):
            for seed in (0, 1):
                _write(parts, f"{profile}_{tgt}_{seed}", profile=profile, pair=f"flat->{tgt}", seed=seed,
                       dp_step={"ratio": 1.1},
                       rows={"direct": _row(base + off + 10.0 + seed, 5.0), "central_full": _row(base + off + 60.0, 40.0),
                             "fed_grouped_record_eps8": _row(base + off + 30.0 + 2 * seed, 20.0, 7.5 + seed / 10,
                                                             bytes_per_site_round=2000, full_model_bytes=200_000,
                                                             settings={"sites": 10, "rounds": 10, "set": []})})
    payload = federated_merge.merge(federated_merge.load_parts(parts)) | {"machine": {}}
    (results / "federated.json").write_text(json.dumps(payload))
    (results / "federated.svg").write_text(federated_merge.plot(payload["runs"]))
    monkeypatch.setattr(readme_tables, "ROOT", tmp_path)
    monkeypatch.setattr(readme_tables, "RESULTS", results)
    monkeypatch.setattr(table_common, "RESULTS", results)  # where `load` reads the JSON
    block = readme_tables.federated("README.md")
    assert block.startswith("**sites** profile, 10 sites") and "seeds 0, 1" in block
    assert "| row | flat→outline R1 | mAP | share | flat→shaded R1 | mAP | share | epsilon per site (delta 1e-05, RDP) |" in block
    # sites, outline: direct 10.5, central 60, fed 31 -> share 20.5 / 49.5; shaded: everything one point higher
    assert f"| fed_grouped_record_eps8 | 31.0 ± 1.4 | 20.0 ± 0.0 | {20.5 / 49.5:.0%} | 32.0 ± 1.4 | 20.0 ± 0.0 | " \
           f"{20.5 / 49.5:.0%} | 7.6 (record-level) |" in block
    assert "2,000 B of trained numbers (1.00% of the full model's 200,000 B" in block
    assert "![test R1 against epsilon](benchmarks/results/federated.svg)" in block
    assert "[federated.md](../benchmarks/results/federated.md)" in readme_tables.federated("docs/results.md")
    # the default profile: one sentence of its key rows (every row in federated.md); direct 110.5 / 111.5, central
    # 160 / 161, fed 131 / 132 -> the same shares as above
    assert "| fed_grouped_record_eps8 | 131.0" not in block
    sh = f"{20.5 / 49.5:.0%}"
    assert ("The **default** profile (test R1 flat→outline / flat→shaded, share of the gain; seeds 0, 1): `direct` "
            f"110.5 / 111.5; `central_full` 160.0 / 161.0; `fed_grouped_record_eps8` 131.0 / 132.0 ({sh} / {sh}).") in block


def test_central_rows_are_reused_from_grouped_dp_only_for_the_same_teacher(parts_here, monkeypatch, tmp_path):
    gdp = tmp_path / "gdp"
    gdp.mkdir()
    (gdp / "sites_outline_s0.json").write_text(json.dumps({"split": "test", "rows": {
        "direct": {"R1": 10.0, "mAP": 8.0}, "gckd_full": {"R1": 60.0, "mAP": 50.0},
        "gckd_grouped_dp_eps8": {"R1": 30.0, "mAP": 25.0, "epsilon": 7.96}}}))
    ran = []

    def central(teacher, t_train, t_eval, bank, seed, only):
        ran.append(set(only))
        return {r: _row(10.0, 8.0) if r == "direct" else _row(1.0, 1.0) for r in only}

    for name, value in (("ensure_data", lambda d, profile="default": d), ("build_backbone", lambda name: None),
                        ("features", lambda *a, **k: None), ("teacher_for", lambda *a: Path("teacher")),
                        ("load_checkpoint", lambda p: type("C", (), {"heads": None})), ("central_rows", central)):
        monkeypatch.setattr(federated, name, value)
    monkeypatch.setattr(federated.PublicBank, "from_source", lambda *a, **k: None)
    args = ["--profile", "sites", "--pairs", "flat:outline", "--seeds", "0", "--central-from", str(gdp),
            "--runs", "central_full", "central_grouped_dp_eps8"]
    federated.main(args)
    rows = json.loads((parts_here / "parts" / "sites_flat_outline_s0.json").read_text())["rows"]
    assert ran == [{"direct"}]  # direct to compare teachers; nothing else ran here
    assert rows["central_full"] == {"R1": 60.0, "mAP": 50.0, "from": "sites_outline_s0.json:gckd_full"}
    g = rows["central_grouped_dp_eps8"]
    assert (g["R1"], g["epsilon"], g["epsilon_unit"], g["delta"], g["accountant"]) == (30.0, 7.96, "record", 1e-5, "rdp")
    assert "direct" not in rows  # not asked for
    (gdp / "sites_outline_s0.json").write_text(json.dumps({"split": "test", "rows": {
        "direct": {"R1": 11.0, "mAP": 8.0}, "gckd_full": {"R1": 60.0, "mAP": 50.0}}}))
    with pytest.raises(ValueError, match="not this teacher's"):
        federated.main(args)
