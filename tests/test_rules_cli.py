"""`scintnode rules check|explain`, run in-process through main(argv) on real files."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from scintnode.cli import main as scintnode_main
from scintnode.route.cli import EXIT_INVALID, EXIT_OK, EXIT_USAGE, main

DATA = Path(__file__).parent / "data"


def save_fixture(name: str, path: Path) -> Path:
    """A DICOM JSON fixture written as a Part-10 file, as a modality would send it."""
    ds = Dataset.from_json(json.loads((DATA / name).read_text()))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def config(tmp_path: Path, destinations: list[str], rules_dir: str | None = None) -> Path:
    lines = ["destinations:"] + [f"  {d}: {{ae_title: {d.upper()}, host: 127.0.0.1, port: 104}}" for d in destinations]
    if not destinations:
        lines = ["destinations: {}"]
    if rules_dir:
        lines.append(f"rules_dir: {rules_dir}")
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "node.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


class TestCheck:
    def test_shipped_rules_are_valid(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["check"]) == EXIT_OK
        out = capsys.readouterr().out
        version = next(line for line in out.splitlines() if line.startswith("rule set version: "))
        assert len(version.removeprefix("rule set version: ")) == 64
        assert "destinations not checked (give --config)" in out
        assert "thyroid-pertechnetate-planar (thyroid.yaml): network thyroid-resnet34, outputs sr, sc, to pacs" in out

    def test_destinations_from_config(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["check", "--config", str(config(tmp_path / "ok", ["pacs"]))]) == EXIT_OK
        assert "destinations checked against the config" in capsys.readouterr().out
        assert main(["check", "--config", str(config(tmp_path / "bad", ["archive"]))]) == EXIT_INVALID
        err = capsys.readouterr().err
        assert "thyroid.yaml" in err and "rule thyroid-pertechnetate-planar" in err
        assert "field destinations[0]: unknown destination 'pacs'; the configuration defines: archive" in err

    def test_config_rules_dir_is_used(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        (tmp_path / "mine").mkdir()
        assert main(["check", "--config", str(config(tmp_path, ["pacs"], "mine"))]) == EXIT_OK
        out = capsys.readouterr().out
        assert f"rules directory: {(tmp_path / 'mine').resolve()}" in out
        assert "warning: no rules" in out

    def test_errors_name_file_line_rule_and_field(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        (tmp_path / "a.yaml").write_text(
            "rules:\n"
            "  - name: first\n"
            "    network: thyroid-resnet34\n"
            "    outputs: [sr]\n"
            "    destinations: [pacs]\n"
            "    when:\n"
            "      attribute: Modalty\n"
            "      equals: NM\n"
        )
        (tmp_path / "b.yaml").write_text("rules:\n  - name: x\n   network: y\n")
        assert main(["check", str(tmp_path)]) == EXIT_INVALID
        captured = capsys.readouterr()
        assert captured.out == ""
        lines = captured.err.splitlines()
        assert lines[0] == (
            f"error: {tmp_path / 'a.yaml'}:7: rule first, field when.attribute: "
            "unknown DICOM keyword 'Modalty' (did you mean Modality or ModalityLUTType?)"
        )
        assert lines[1].startswith(f"error: {tmp_path / 'b.yaml'}:3: rule (none), field (none): YAML syntax error")
        assert lines[2] == "2 problems: the rule set was not loaded"

    def test_usage_and_config_errors(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert main([]) == EXIT_USAGE
        assert main(["frobnicate"]) == EXIT_USAGE
        bad = tmp_path / "bad.yaml"
        bad.write_text("node: {port: -1}\n")
        assert main(["check", "--config", str(bad)]) == EXIT_USAGE
        assert "node.port" in capsys.readouterr().err
        assert main(["check", str(tmp_path / "missing")]) == EXIT_INVALID
        assert "no such rules directory" in capsys.readouterr().err

    def test_dispatched_from_the_scintnode_command(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert scintnode_main(["rules", "check"]) == EXIT_OK
        assert "rule set version" in capsys.readouterr().out


class TestExplain:
    def test_matching_and_not_matching_files(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        thyroid = save_fixture("nm_thyroid_tc99m.json", tmp_path / "thyroid.dcm")
        neck = save_fixture("nm_neck_i131.json", tmp_path / "neck.dcm")
        assert main(["explain", str(thyroid), str(neck)]) == EXIT_OK
        out = capsys.readouterr().out
        first, second = out.split("\n== ")[1:]
        assert "Nuclear Medicine Image Storage, Modality NM, Patient ID SYNTH-0001" in first
        assert "radionuclide             tc99m (code: RadionuclideCodeSequence SRT C-163A8)" in first
        assert "minutes_after_injection  20 (computed:" in first
        assert (
            "thyroid-pertechnetate-planar: MATCHED, fires -> network thyroid-resnet34, outputs sr, sc, to pacs" in first
        )
        assert "[pass] fact radiopharmaceutical equals 'pertechnetate'" in first
        assert "result: fires" in first and "thyroid-pertechnetate-planar" in first.rstrip().splitlines()[-1]
        assert "thyroid-pertechnetate-planar: not matched" in second
        assert (
            "[fail] fact radionuclide equals 'tc99m': found 'i131' "
            "(code: RadionuclideCodeSequence SCT 1368003)" in second
        )
        # the I-131 neck scan goes to its own network, never to the pertechnetate classifier
        assert second.rstrip().endswith("result: fires i131-neck-planar")

    def test_patient_name_is_never_printed(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        rules = tmp_path / "rules"
        rules.mkdir()
        (rules / "name.yaml").write_text(
            "rules:\n  - name: by-name\n    network: thyroid-resnet34\n    outputs: [sr]\n"
            "    destinations: [pacs]\n    when: {attribute: PatientName, matches: PHANTOM}\n"
        )
        thyroid = save_fixture("nm_thyroid_tc99m.json", tmp_path / "thyroid.dcm")
        assert main(["explain", str(thyroid), "--rules", str(rules)]) == EXIT_OK
        out = capsys.readouterr().out
        assert "SYNTHETIC" not in out
        assert "by-name: MATCHED" in out and "(person name, not shown)" in out

    def test_phantom_header(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        from scintnode.phantoms import nm

        start = datetime(2024, 3, 12, 9, 0)
        ds = nm.build_nm_image(
            np.zeros((1, 16, 16), dtype=np.uint16),
            patient=nm.Patient("SYN0002", "SYNTHETIC^PHANTOM", None, "F"),
            study=nm.StudyInfo(generate_uid(), start, accession="SYN2", description="thyroid (synthetic)"),
            series_uid=generate_uid(),
            series_number=1,
            series_description="THYROID ANT (synthetic)",
            agent="pertechnetate",
            acquired=start + timedelta(minutes=20),
            injected=start,
            coding="none",
        )
        path = nm.save(ds, tmp_path / "phantom.dcm")
        assert main(["explain", str(path)]) == EXIT_OK
        out = capsys.readouterr().out
        assert "radionuclide             tc99m (text: Radiopharmaceutical 'Tc-99m Pertechnetate')" in out
        assert "result: fires thyroid-pertechnetate-planar" in out
        assert "SYNTHETIC^PHANTOM" not in out

    def test_unreadable_file_is_reported_and_others_still_explained(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        junk = tmp_path / "junk.dcm"
        junk.write_text("not dicom")
        thyroid = save_fixture("nm_thyroid_tc99m.json", tmp_path / "thyroid.dcm")
        assert main(["explain", str(junk), str(thyroid), str(tmp_path / "absent.dcm")]) == EXIT_INVALID
        captured = capsys.readouterr()
        assert f"error: {junk}: not a readable DICOM file" in captured.err
        assert f"error: {tmp_path / 'absent.dcm'}: not a readable DICOM file" in captured.err
        assert "result: fires thyroid-pertechnetate-planar" in captured.out

    def test_invalid_rules_stop_explain(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        (tmp_path / "r.yaml").write_text("rules: 3\n")
        thyroid = save_fixture("nm_thyroid_tc99m.json", tmp_path / "thyroid.dcm")
        assert main(["explain", str(thyroid), "--rules", str(tmp_path)]) == EXIT_INVALID
        assert "field rules: `rules:` must be a list of rules" in capsys.readouterr().err
