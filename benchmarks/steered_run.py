"""The real ``pixelsift`` command, with a random-weight LLM steered to the workload's documents.

    python -m benchmarks.steered_run run --batch B --config pixelsift.toml

Random weights never finish a JSON document: in a plain ``pixelsift run`` with full-size random
models the LLM writes to its token budget on every row, several times a real document's tokens,
so the run's wall time is not a user's. This is the same command (``dagster_project.cli``, in this
process) with one change: the constrained decoder's token choice is steered, row i of every call
to the i-th document of ``benchmarks/workload.py`` (cycling), as ``pixelsift bench`` steers it
(``benchmarks/steering.py``). Model loading, every forward call, grammar mask, jump-forward,
Dagster step and Parquet write is the real one. Captions are not steered: the random captioner
writes its ``max_new_tokens`` (20, the workload's caption length).
"""

from __future__ import annotations

import dataclasses
import itertools
import sys

from assets.llm_schemas import ClusterLabelOutput, ImageMetadataOutput
from benchmarks.steering import DocumentSteering
from benchmarks.workload import CLUSTER_EXAMPLES, EXAMPLES, document

TARGETS = {ImageMetadataOutput: [document(e.metadata) for e in EXAMPLES],
           ClusterLabelOutput: [document(label) for _, label in CLUSTER_EXAMPLES]}


def install() -> None:
    """Steer every ``decode_constrained`` call of this process (both LLM backends go through it) and
    give every caption the workload's text."""
    from resources import constrained_decoding
    from resources.captioner import CaptionerResource

    real = constrained_decoding.decode_constrained
    if getattr(real, "steered", False):
        return

    def steered(engine, grammars, grammar, prompts, **kwargs):
        schema = next((s for s in TARGETS if grammars.compile(s) is grammar), None)
        if schema is None:
            raise RuntimeError("steered_run: a grammar of a schema with no target documents")
        targets = TARGETS[schema]
        kwargs["choose"] = DocumentSteering(grammars, [targets[i % len(targets)] for i in range(len(prompts))])
        return real(engine, grammars, grammar, prompts, **kwargs)

    steered.steered = True
    constrained_decoding.decode_constrained = steered

    captions, caption = itertools.cycle(e.caption for e in EXAMPLES), CaptionerResource.caption

    def realistic(self, images, prompt):
        return [dataclasses.replace(c, text=next(captions)) for c in caption(self, images, prompt)]

    CaptionerResource.caption = realistic


def main() -> None:
    install()
    from dagster_project.cli import main as pixelsift

    pixelsift(args=sys.argv[1:], prog_name="pixelsift")


if __name__ == "__main__":
    main()
