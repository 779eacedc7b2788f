"""input-check: a stand-in that runs where a network has not landed yet; it checks the inputs, no AI.

It proves an episode gathered the right images (their pixel data decode, every slot is the kind of image
its rule asked for) and reports that in an SR, clearly named; it makes no finding about the patient."""

from __future__ import annotations

import time
from collections.abc import Sequence

from pydicom import Dataset

from scintnode.finding import Finding
from scintnode.models.spec import Code, LabelSpec, ModelSpec

SPEC = ModelSpec(
    name="input-check",
    version="1.0",
    title="Input check only (no AI model): episode inputs gathered and readable",
    labels=(LabelSpec("verified", "inputs verified", Code("SCINT-IC-1", "99SCINT", "Inputs verified (no AI model)")),),
    finding_site=Code("45048000", "SCT", "Neck"),
    procedure=Code("49118-3", "LN", "NM unspecified body region"),
    weights_sha256="none",
    trained_on_synthetic=False,
)


class InputCheck:
    spec = SPEC

    def run(self, sources: Sequence[Dataset]) -> Finding:
        return self.run_episode(tuple("input" for _ in sources), sources)

    def run_episode(self, slots: Sequence[str], sources: Sequence[Dataset]) -> Finding:
        started = time.perf_counter()
        if not sources or len(slots) != len(sources):
            raise ValueError("input-check needs one slot name per input image")
        for slot, ds in zip(slots, sources, strict=True):
            try:
                pixels = ds.pixel_array
            except Exception as exc:  # any decoder failure is the finding here
                raise ValueError(f"slot {slot}: pixel data of {ds.SOPInstanceUID} cannot be decoded: {exc}") from exc
            if pixels.size == 0:
                raise ValueError(f"slot {slot}: image {ds.SOPInstanceUID} has no pixels")
        return Finding(
            model=SPEC,
            predicted="verified",
            probabilities={"verified": 1.0},
            hotspots=(),
            inference_ms=(time.perf_counter() - started) * 1000,
        )


def load_input_check() -> InputCheck:
    return InputCheck()
