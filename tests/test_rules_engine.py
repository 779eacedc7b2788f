"""Rule language, evaluation with traces, rule-set loading, errors and versions."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from scintnode.config import DEFAULT_RULES_DIR
from scintnode.route import Decision, RuleError, RuleSet, load_rule_set
from scintnode.route.loader import check_rule_set

DATA = Path(__file__).parent / "data"
NETWORKS = ["net-a", "net-b", "thyroid-resnet34"]


def fixture_header(name: str) -> Dataset:
    return Dataset.from_json(json.loads((DATA / name).read_text()))


def code(value: str, scheme: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    return item


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def rule_yaml(name: str, when: str, extra: str = "") -> str:
    """One rule in YAML; `when` is the YAML of the condition, indented by the caller's dedent."""
    body = textwrap.indent(textwrap.dedent(when).strip(), " " * 6)
    return (
        f"  - name: {name}\n    network: net-a\n    outputs: [sr]\n    destinations: [pacs]\n{extra}    when:\n{body}\n"
    )


def single(tmp_path: Path, when: str) -> RuleSet:
    write(tmp_path / "rules", "r.yaml", "rules:\n" + rule_yaml("r", when))
    return load_rule_set(tmp_path / "rules", networks=NETWORKS)


def decide(tmp_path: Path, when: str, header: Dataset) -> Decision:
    (decision,) = single(tmp_path, when).evaluate(header)
    return decision


def header() -> Dataset:
    """A small NM header with multi-valued, numeric, nested-sequence and coded attributes."""
    ds = Dataset()
    ds.Modality = "NM"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "STATIC", "EMISSION"]
    ds.SeriesDescription = "  Thyroid Tc99m ANT  "
    ds.PatientName = "SYNTHETIC^SECRETNAME"
    ds.PatientID = "SYN-1"
    ds.NumberOfFrames = "2"
    ds.SliceThickness = "3.5"
    ds.BodyPartExamined = ""
    first = Dataset()
    first.Radiopharmaceutical = "Tc-99m pertechnetate"
    first.RadionuclideCodeSequence = [code("C-163A8", "SRT")]
    second = Dataset()
    second.Radiopharmaceutical = "I-123"
    second.RadionuclideCodeSequence = [code("21572004", "SCT")]
    ds.RadiopharmaceuticalInformationSequence = [first, second]
    detector = Dataset()
    detector.ViewCodeSequence = [code("399321004", "SCT")]
    detector.ViewCodeSequence[0].ViewModifierCodeSequence = [code("G-A19B", "SRT")]
    ds.DetectorInformationSequence = [detector]
    return ds


class TestOperators:
    @pytest.mark.parametrize(
        ("when", "expected"),
        [
            ("{attribute: Modality, equals: NM}", True),
            ("{attribute: Modality, equals: CT}", False),
            ("{attribute: Modality, in: [CT, NM]}", True),
            ("{attribute: Modality, in: [CT, PT]}", False),
            ("{attribute: SeriesDescription, matches: 'tc ?99m'}", True),
            ("{attribute: SeriesDescription, matches: '^ANT'}", False),
            ("{attribute: SeriesDescription, matches: '^thyroid.*ant$'}", True),
            ("{attribute: SeriesDescription, contains: TC99M}", True),
            ("{attribute: SeriesDescription, contains: POST}", False),
            ("{attribute: Modality, present: true}", True),
            ("{attribute: StudyDescription, present: true}", False),
            ("{attribute: StudyDescription, absent: true}", True),
            ("{attribute: Modality, absent: true}", False),
            ("{attribute: NumberOfFrames, gt: 1}", True),
            ("{attribute: NumberOfFrames, gt: 2}", False),
            ("{attribute: NumberOfFrames, ge: 2}", True),
            ("{attribute: NumberOfFrames, ge: 3}", False),
            ("{attribute: SliceThickness, lt: 4}", True),
            ("{attribute: SliceThickness, lt: 3.5}", False),
            ("{attribute: SliceThickness, le: 3.5}", True),
            ("{attribute: SliceThickness, le: 3}", False),
            ("{attribute: SliceThickness, between: [3.5, 4]}", True),
            ("{attribute: SliceThickness, between: [1, 3.4]}", False),
            ("{attribute: NumberOfFrames, equals: 2}", True),
            ("{attribute: NumberOfFrames, equals: 2.0}", True),
            ("{attribute: NumberOfFrames, equals: '2'}", True),
            ("{attribute: NumberOfFrames, equals: 3}", False),
            (
                "{attribute: 'DetectorInformationSequence[*].ViewCodeSequence', "
                "code: {value: '399321004', scheme: SCT}}",
                True,
            ),
            (
                "{attribute: 'DetectorInformationSequence[*].ViewCodeSequence', "
                "code: {value: '399001007', scheme: SCT}}",
                False,
            ),
        ],
    )
    def test_operator(self, tmp_path: Path, when: str, expected: bool) -> None:
        decision = decide(tmp_path, when, header())
        assert decision.matched is expected, decision.trace

    def test_text_comparisons_ignore_case_unless_told(self, tmp_path: Path) -> None:
        assert decide(tmp_path / "a", "{attribute: Modality, equals: nm}", header()).matched
        sensitive = "{attribute: Modality, equals: nm, case: sensitive}"
        assert not decide(tmp_path / "b", sensitive, header()).matched
        regex = "{attribute: SeriesDescription, matches: thyroid, case: sensitive}"
        assert not decide(tmp_path / "c", regex, header()).matched

    def test_padding_is_trimmed(self, tmp_path: Path) -> None:
        assert decide(tmp_path, "{attribute: SeriesDescription, equals: 'THYROID TC99M ANT '}", header()).matched

    @pytest.mark.filterwarnings("ignore:Invalid value for VR")
    def test_number_operator_on_text_value_fails(self, tmp_path: Path) -> None:
        ds = header()
        # as a broken camera might send it; pydicom converts it (and warns) only when read
        ds[0x00280008] = RawDataElement(Tag(0x00280008), "IS", 2, b"x ", 0, False, True)
        decision = decide(tmp_path, "{attribute: NumberOfFrames, gt: 0}", ds)
        assert not decision.matched
        assert decision.trace[0].startswith("[fail]")

    def test_tag_and_private_tag_subjects(self, tmp_path: Path) -> None:
        ds = header()
        ds.add_new(0x00091001, "LO", "VENDOR THING")
        assert decide(tmp_path / "a", "{attribute: '(0008,0060)', equals: NM}", header()).matched
        assert decide(tmp_path / "b", "{attribute: '00080060', equals: NM}", header()).matched
        assert decide(tmp_path / "c", "{attribute: '(0009,1001)', contains: vendor}", ds).matched


class TestMultiValuedAndSequences:
    def test_multi_valued_any_value_and_positions(self, tmp_path: Path) -> None:
        assert decide(tmp_path / "a", "{attribute: ImageType, equals: STATIC}", header()).matched
        assert decide(tmp_path / "b", "{attribute: ImageType, contains: STAT}", header()).matched
        assert decide(tmp_path / "c", "{attribute: 'ImageType[3]', equals: STATIC}", header()).matched
        assert not decide(tmp_path / "d", "{attribute: 'ImageType[1]', equals: STATIC}", header()).matched
        assert (
            decide(tmp_path / "e", "{attribute: 'ImageType[9]', equals: X}", header()).trace[0].startswith("[missing]")
        )

    def test_any_item_of_a_sequence(self, tmp_path: Path) -> None:
        path = "RadiopharmaceuticalInformationSequence[*].Radiopharmaceutical"
        assert decide(tmp_path / "a", f"{{attribute: '{path}', matches: I-123}}", header()).matched
        assert decide(tmp_path / "b", f"{{attribute: '{path}', matches: pertech}}", header()).matched
        first_only = "RadiopharmaceuticalInformationSequence[1].Radiopharmaceutical"
        assert not decide(tmp_path / "c", f"{{attribute: '{first_only}', matches: I-123}}", header()).matched

    def test_nested_two_levels(self, tmp_path: Path) -> None:
        path = "RadiopharmaceuticalInformationSequence[*].RadionuclideCodeSequence[*].CodeValue"
        assert decide(tmp_path / "a", f"{{attribute: '{path}', equals: '21572004'}}", header()).matched
        assert decide(tmp_path / "b", f"{{attribute: '{path}', equals: C-163A8}}", header()).matched
        second = "RadiopharmaceuticalInformationSequence[2].RadionuclideCodeSequence[1].CodeValue"
        assert not decide(tmp_path / "c", f"{{attribute: '{second}', equals: C-163A8}}", header()).matched
        three = "DetectorInformationSequence[*].ViewCodeSequence[*].ViewModifierCodeSequence[*].CodeValue"
        assert decide(tmp_path / "d", f"{{attribute: '{three}', equals: G-A19B}}", header()).matched

    def test_sequence_presence(self, tmp_path: Path) -> None:
        assert decide(tmp_path / "a", "{attribute: DetectorInformationSequence, present: true}", header()).matched
        assert decide(tmp_path / "b", "{attribute: ViewCodeSequence, absent: true}", header()).matched


class TestCodes:
    path = "RadiopharmaceuticalInformationSequence[*].RadionuclideCodeSequence"

    @pytest.mark.parametrize(
        "wanted",
        [
            "{value: '72454006', scheme: SCT}",
            "{value: C-163A8, scheme: SRT}",
            "{value: C-163A8, scheme: SNM3}",
        ],
    )
    def test_sct_and_legacy_srt_are_equivalent(self, tmp_path: Path, wanted: str) -> None:
        tc_only = header()
        del tc_only.RadiopharmaceuticalInformationSequence[1]
        tc_only.RadiopharmaceuticalInformationSequence[0].RadionuclideCodeSequence = [code("72454006", "SCT")]
        srt = header()
        assert decide(tmp_path / "sct", f"{{attribute: '{self.path}', code: {wanted}}}", tc_only).matched
        assert decide(tmp_path / "srt", f"{{attribute: '{self.path}', code: {wanted}}}", srt).matched

    def test_other_nuclide_does_not_match(self, tmp_path: Path) -> None:
        decision = decide(tmp_path, f"{{attribute: '{self.path}', code: {{value: '1368003', scheme: SCT}}}}", header())
        assert not decision.matched
        assert "SRT C-163A8" in decision.trace[0] and "SCT 21572004" in decision.trace[0]

    def test_pydicom_mapping_covers_codes_beyond_our_table(self, tmp_path: Path) -> None:
        ds = header()
        ds.AnatomicRegionSequence = [code("T-B6000", "SRT")]  # thyroid, legacy
        when = "{attribute: AnatomicRegionSequence, code: {value: '69748006', scheme: SCT}}"
        assert decide(tmp_path, when, ds).matched

    def test_code_values_compare_exactly(self, tmp_path: Path) -> None:
        when = f"{{attribute: '{self.path}', code: {{value: c-163a8, scheme: SRT}}}}"
        assert not decide(tmp_path, when, header()).matched


class TestMissingAndCombinators:
    def test_missing_is_neither_true_nor_false(self, tmp_path: Path) -> None:
        decision = decide(tmp_path, "{attribute: StudyDescription, equals: X}", header())
        assert not decision.matched
        assert decision.trace == ("[missing] StudyDescription equals 'X': not in header",)

    def test_present_but_empty_counts_as_missing(self, tmp_path: Path) -> None:
        decision = decide(tmp_path / "a", "{attribute: BodyPartExamined, equals: X}", header())
        assert decision.trace[0] == "[missing] BodyPartExamined equals 'X': present but empty"
        assert decide(tmp_path / "b", "{attribute: BodyPartExamined, absent: true}", header()).matched

    def test_not_of_missing_stays_missing(self, tmp_path: Path) -> None:
        decision = decide(tmp_path, "{not: {attribute: StudyDescription, equals: X}}", header())
        assert not decision.matched
        assert decision.trace[0] == "[missing] not"

    def test_not_of_false_is_true(self, tmp_path: Path) -> None:
        assert decide(tmp_path, "{not: {attribute: Modality, equals: CT}}", header()).matched

    def test_all_and_any_three_valued(self, tmp_path: Path) -> None:
        true, false, missing = (
            "{attribute: Modality, equals: NM}",
            "{attribute: Modality, equals: CT}",
            "{attribute: StudyDescription, equals: X}",
        )
        cases = {
            f"{{all: [{true}, {missing}]}}": "[missing] all of 2",
            f"{{all: [{false}, {missing}]}}": "[fail] all of 2",
            f"{{all: [{true}, {true}]}}": "[pass] all of 2",
            f"{{any: [{true}, {missing}]}}": "[pass] any of 2",
            f"{{any: [{false}, {missing}]}}": "[missing] any of 2",
            f"{{any: [{false}, {false}]}}": "[fail] any of 2",
        }
        for number, (when, first_line) in enumerate(cases.items()):
            decision = decide(tmp_path / str(number), when, header())
            assert decision.trace[0] == first_line
            assert decision.matched is first_line.startswith("[pass]")
            assert len(decision.trace) == 3  # every child is traced, no short cut

    def test_absent_or_different_idiom(self, tmp_path: Path) -> None:
        when = "{any: [{attribute: StudyDescription, absent: true}, {not: {attribute: StudyDescription, equals: X}}]}"
        assert decide(tmp_path, when, header()).matched


class TestFactsInRules:
    def test_fact_predicates_and_trace_source(self, tmp_path: Path) -> None:
        ds = fixture_header("nm_thyroid_tc99m.json")
        decision = decide(tmp_path / "a", "{fact: radionuclide, equals: tc99m}", ds)
        assert decision.matched
        assert decision.trace[0] == (
            "[pass] fact radionuclide equals 'tc99m': found 'tc99m' (code: RadionuclideCodeSequence SRT C-163A8)"
        )
        assert decide(tmp_path / "b", "{fact: minutes_after_injection, between: [15, 25]}", ds).matched
        assert decide(tmp_path / "c", "{fact: energy_window_kev, gt: 140}", ds).matched
        assert decide(tmp_path / "d", "{fact: views, equals: anterior}", ds).matched
        assert decide(tmp_path / "e", "{fact: radiopharmaceutical, in: [sestamibi, pertechnetate]}", ds).matched

    def test_unknown_fact_value_is_missing(self, tmp_path: Path) -> None:
        decision = decide(tmp_path, "{fact: view, equals: posterior}", Dataset())
        assert decision.trace[0].startswith("[missing] fact view equals 'posterior': unknown (")


class TestTrace:
    def test_person_names_are_not_shown(self, tmp_path: Path) -> None:
        decision = decide(tmp_path, "{attribute: PatientName, matches: SECRET}", header())
        assert decision.matched
        assert "SYNTHETIC" not in " ".join(decision.trace)
        assert "(person name, not shown)" in decision.trace[0]

    def test_trace_has_one_line_per_predicate_with_value_and_outcome(self, tmp_path: Path) -> None:
        when = """
        all:
          - {attribute: Modality, equals: NM}
          - not: {attribute: ImageType, contains: DERIVED}
          - {attribute: NumberOfFrames, lt: 2}
        """
        decision = decide(tmp_path, when, header())
        assert decision.trace == (
            "[fail] all of 3",
            "  [pass] Modality equals 'NM': found 'NM'",
            "  [pass] not",
            "    [fail] ImageType contains 'DERIVED': found 'ORIGINAL', 'PRIMARY', 'STATIC', 'EMISSION'",
            "  [fail] NumberOfFrames lt 2: found 2",
        )


class TestSeveralRules:
    def rules(self, tmp_path: Path) -> RuleSet:
        nm = "{attribute: Modality, equals: NM}"
        write(
            tmp_path,
            "b.yaml",
            "rules:\n" + rule_yaml("b-first", nm) + rule_yaml("b-stop", nm, "    stop: true\n"),
        )
        write(tmp_path, "a.yaml", "rules:\n" + rule_yaml("a-disabled", nm, "    enabled: false\n"))
        write(tmp_path, "c.yaml", "rules:\n" + rule_yaml("c-after-stop", nm))
        return load_rule_set(tmp_path, networks=NETWORKS)

    def test_order_stop_and_disabled(self, tmp_path: Path) -> None:
        rule_set = self.rules(tmp_path)
        decisions = rule_set.evaluate(header())
        assert [d.rule.name for d in decisions] == ["a-disabled", "b-first", "b-stop", "c-after-stop"]
        assert [d.matched for d in decisions] == [True, True, True, True]
        assert [d.fires for d in decisions] == [False, True, True, False]
        assert decisions[0].trace[-1] == "not fired: the rule is disabled (enabled: false)"
        assert decisions[3].trace[-1] == "not fired: rule b-stop fired before it with stop: true"
        assert [r.name for r in rule_set.matching(header())] == ["b-first", "b-stop"]
        assert decisions[1].rule.file == "b.yaml"

    def test_which_files_are_rules(self, tmp_path: Path) -> None:
        nm = "{attribute: Modality, equals: NM}"
        write(tmp_path, "b.yml", "rules:\n" + rule_yaml("from-yml", nm))
        write(tmp_path, ".editor-backup.yaml", "not: [valid")
        write(tmp_path / "fixtures", "case.yaml", "header: {}")
        write(tmp_path, "README.md", "# notes")
        assert [r.name for r in load_rule_set(tmp_path, networks=NETWORKS).rules] == ["from-yml"]


class TestShippedThyroidRule:
    def rule_set(self) -> RuleSet:
        return load_rule_set(DEFAULT_RULES_DIR, destinations=["pacs"])  # networks from the catalog

    def test_pertechnetate_static_matches(self) -> None:
        (rule,) = self.rule_set().matching(fixture_header("nm_thyroid_tc99m.json"))
        assert (rule.network, rule.outputs, rule.destinations) == (
            "thyroid-resnet34",
            ("sr", "sc"),
            ("pacs",),
        )

    def test_i131_neck_scan_does_not_match(self) -> None:
        decisions = self.rule_set().evaluate(fixture_header("nm_neck_i131.json"))
        decision = next(d for d in decisions if d.rule.name == "thyroid-pertechnetate-planar")
        assert not decision.matched
        assert any("[fail] fact radionuclide equals 'tc99m': found 'i131'" in line for line in decision.trace)

    @pytest.mark.parametrize(
        ("keyword", "value"),
        [
            ("ImageType", ["DERIVED", "SECONDARY", "STATIC"]),
            ("ImageType", ["ORIGINAL", "PRIMARY", "WHOLE BODY"]),
            ("Modality", "OT"),
        ],
    )
    def test_other_images_do_not_match(self, keyword: str, value: object) -> None:
        ds = fixture_header("nm_thyroid_tc99m.json")
        setattr(ds, keyword, value)
        assert self.rule_set().matching(ds) == []


class TestErrors:
    def error(self, tmp_path: Path, text: str, **kwargs: object) -> RuleError:
        write(tmp_path, "bad.yaml", text)
        with pytest.raises(RuleError) as info:
            load_rule_set(tmp_path, networks=NETWORKS, **kwargs)  # type: ignore[arg-type]
        error = info.value
        assert error.file.endswith("bad.yaml")
        text = str(error)
        assert error.file in text
        assert f"rule {error.rule or '(none)'}" in text and f"field {error.field or '(none)'}" in text
        return error

    @pytest.mark.parametrize(
        ("when", "field", "words"),
        [
            ("{attribute: Modalty, equals: NM}", "when.attribute", "unknown DICOM keyword 'Modalty'"),
            ("{attribute: Modality, equal: NM}", "when.equal", "did you mean `equals`"),
            ("{attribute: Modality, like: NM}", "when.like", "unknown key `like`"),
            ("{attribute: SeriesDescription, matches: '(abc'}", "when.matches", "bad regular expression"),
            ("{attribute: Modality, equals: NO}", "when.equals", "boolean"),
            ("{attribute: Modality, equals: NM, in: [CT]}", "when", "exactly one operator"),
            (
                "{attribute: Modality, fact: view, present: true}",
                "when",
                "exactly one of `attribute` or `fact`",
            ),
            ("{attribute: 'ImageType[0]', equals: X}", "when.attribute", "count from 1"),
            (
                "{attribute: RadiopharmaceuticalInformationSequence.Radiopharmaceutical, equals: X}",
                "when.attribute",
                "[*]",
            ),
            ("{attribute: Modality.CodeValue, equals: X}", "when.attribute", "not a sequence"),
            ("{attribute: ViewCodeSequence, equals: X}", "when.attribute", "is a sequence"),
            ("{attribute: Modality, gt: 3}", "when.gt", "compares numbers"),
            ("{attribute: Modality, code: {value: x, scheme: SCT}}", "when.code", "code sequence"),
            ("{attribute: '(0008,9999)', equals: X}", "when.attribute", "not in the DICOM dictionary"),
            ("{attribute: Modality, present: false}", "when.present", "write `true`"),
            ("{attribute: SliceThickness, between: [5, 1]}", "when", "low <= high"),
            ("{fact: nuclide, equals: tc99m}", "when.fact", "unknown fact 'nuclide'"),
            ("{fact: radionuclide, equals: tc-99m}", "when.equals", "never 'tc-99m'"),
            ("{fact: views, in: [anterior, left]}", "when.in", "never 'left'"),
            ("{fact: minutes_after_injection, matches: x}", "when.matches", "is a number"),
            ("{fact: radionuclide, ge: 1}", "when.ge", "is text"),
            ("{all: []}", "when.all", "non-empty list"),
            ("{all: [{attribute: Modality, equals: NM}], any: []}", "when", "must stand alone"),
            ("{not: [{attribute: Modality, equals: NM}]}", "when.not", "must be a mapping"),
            (
                "{any: [{attribute: Modality, equals: NM}, {fact: view, equals: top}]}",
                "when.any[1].equals",
                "never 'top'",
            ),
        ],
    )
    def test_condition_errors_name_file_rule_and_field(self, tmp_path: Path, when: str, field: str, words: str) -> None:
        error = self.error(tmp_path, "rules:\n" + rule_yaml("my-rule", when))
        assert error.rule == "my-rule"
        assert error.field == field
        assert words in error.problem
        assert error.line is not None and error.line >= 6

    def test_yaml_syntax_error_has_a_line(self, tmp_path: Path) -> None:
        error = self.error(tmp_path, "rules:\n  - name: x\n   network: y\n")
        assert (error.rule, error.field, error.line) == (None, None, 3)
        assert "YAML syntax error" in error.problem

    def test_duplicate_key(self, tmp_path: Path) -> None:
        error = self.error(tmp_path, "rules:\n" + rule_yaml("dup-key", "{attribute: Modality, equals: NM, equals: CT}"))
        assert (error.rule, error.field) == ("dup-key", "when.equals")
        assert "appears twice" in error.problem

    def test_duplicate_rule_names_across_files(self, tmp_path: Path) -> None:
        write(tmp_path, "a.yaml", "rules:\n" + rule_yaml("same", "{attribute: Modality, equals: NM}"))
        error = self.error(tmp_path, "rules:\n" + rule_yaml("same", "{attribute: Modality, equals: NM}"))
        assert (error.rule, error.field, error.line) == ("same", "name", 2)
        assert "already defined in a.yaml" in error.problem

    def test_unknown_network_and_destination(self, tmp_path: Path) -> None:
        text = "rules:\n" + rule_yaml("r", "{attribute: Modality, equals: NM}").replace("net-a", "net-z")
        network = self.error(tmp_path / "n", text)
        assert (network.rule, network.field) == ("r", "network")
        assert "unknown network 'net-z'" in network.problem
        ok_network = "rules:\n" + rule_yaml("r", "{attribute: Modality, equals: NM}")
        destination = self.error(tmp_path / "d", ok_network, destinations=["archive"])
        assert (destination.rule, destination.field) == ("r", "destinations[0]")
        assert "unknown destination 'pacs'" in destination.problem

    @pytest.mark.parametrize(
        ("text", "field", "words"),
        [
            ("", None, "empty"),
            ("rules: {}\n", "rules", "must be a list"),
            ("rules: []\nversion: 3\n", "version", "unknown key `version`"),
            (
                "rules:\n  - name: r\n    network: net-a\n    outputs: [sr]\n    destinations: [pacs]\n",
                "when",
                "required key `when`",
            ),
            (
                "rules:\n" + rule_yaml("r", "{attribute: Modality, equals: NM}").replace("[sr]", "[pdf]"),
                "outputs[0]",
                "'sr', 'sc' or 'seg'",
            ),
            (
                "rules:\n" + rule_yaml("r", "{attribute: Modality, equals: NM}").replace("[pacs]", "[]"),
                "destinations",
                "at least one destination",
            ),
            (
                "rules:\n" + rule_yaml("r", "{attribute: Modality, equals: NM}", "    colour: red\n"),
                "colour",
                "unknown key `colour`",
            ),
        ],
    )
    def test_file_and_rule_shape_errors(self, tmp_path: Path, text: str, field: str | None, words: str) -> None:
        error = self.error(tmp_path, text)
        assert error.field == field
        assert words in error.problem

    def test_bad_name_uses_position(self, tmp_path: Path) -> None:
        error = self.error(tmp_path, "rules:\n" + rule_yaml("bad name!", "{attribute: Modality, equals: NM}"))
        assert (error.rule, error.field) == ("bad name!", "name")

    def test_missing_directory(self, tmp_path: Path) -> None:
        with pytest.raises(RuleError, match="no such rules directory"):
            load_rule_set(tmp_path / "nowhere")

    def test_every_problem_is_reported(self, tmp_path: Path) -> None:
        text = "rules:\n" + rule_yaml(
            "many",
            """
            all:
              - {attribute: Modalty, equals: NM}
              - {attribute: SeriesDescription, matches: '('}
              - {fact: view, equals: sideways}
            """,
        )
        write(tmp_path, "bad.yaml", text)
        rule_set, errors = check_rule_set(tmp_path, networks=NETWORKS)
        assert rule_set is None
        assert [e.field for e in errors] == [
            "when.all[0].attribute",
            "when.all[1].matches",
            "when.all[2].equals",
        ]
        assert [e.line for e in errors] == [8, 9, 10]


class TestVersion:
    base = """\
    # routes NM
    rules:
      - name: r
        network: net-a
        outputs: [sr, sc]
        destinations: [pacs]
        when:
          all:
            - attribute: Modality
              equals: NM
            - {fact: radionuclide, equals: tc99m}
    """

    def version(self, tmp_path: Path, files: dict[str, str]) -> str:
        for name, text in files.items():
            write(tmp_path, name, text)
        return load_rule_set(tmp_path, networks=NETWORKS).version

    def test_formatting_comments_key_order_and_defaults_do_not_change_it(self, tmp_path: Path) -> None:
        reference = self.version(tmp_path / "0", {"r.yaml": self.base})
        assert len(reference) == 64
        same = """\
        rules:
        - when: {all: [{equals: "NM", attribute: "Modality"}, {equals: tc99m, fact: radionuclide}]}
          destinations:
            - pacs   # the hospital PACS
          outputs:
            - sr
            - sc
          enabled: true

          network: net-a
          name: r
        """
        assert self.version(tmp_path / "1", {"r.yaml": same}) == reference

    @pytest.mark.parametrize(
        ("old", "new"),
        [
            ("equals: NM", "equals: CT"),
            ("[sr, sc]", "[sc, sr]"),
            ("name: r", "name: s"),
            ("equals: NM", "equals: NM\n          case: sensitive"),
        ],
    )
    def test_content_changes_change_it(self, tmp_path: Path, old: str, new: str) -> None:
        reference = self.version(tmp_path / "0", {"r.yaml": self.base})
        changed = textwrap.dedent(self.base).replace(old, new)
        assert self.version(tmp_path / "1", {"r.yaml": changed}) != reference

    def test_file_name_and_rule_order_change_it(self, tmp_path: Path) -> None:
        other = textwrap.dedent(self.base).replace("name: r", "name: q")
        reference = self.version(tmp_path / "0", {"a.yaml": self.base, "b.yaml": other})
        assert self.version(tmp_path / "1", {"b.yaml": self.base, "a.yaml": other}) != reference
        assert self.version(tmp_path / "2", {"a.yaml": self.base, "c.yaml": other}) != reference
        assert self.version(tmp_path / "3", {"a.yaml": self.base, "b.yaml": other}) == reference

    def test_text_and_number_operands_differ(self, tmp_path: Path) -> None:
        quoted = textwrap.dedent(self.base).replace("equals: NM", "equals: '2'")
        number = textwrap.dedent(self.base).replace("equals: NM", "equals: 2")
        assert self.version(tmp_path / "0", {"r.yaml": quoted}) != self.version(tmp_path / "1", {"r.yaml": number})
