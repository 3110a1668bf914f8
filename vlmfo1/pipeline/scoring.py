"""Region scores: the proposer's, the model's own, or both.

* ``proposal``: the proposer's score (upstream's only score, SPEC §4); boxes given without scores
  count as 1.0.
* ``llm``: the probability the model gave each region token at the step where it emitted it
  (softmax of that step's logits). The first region of a list is a choice among all regions; a
  later one is conditioned on the ones before it, exactly as the answer was generated.
* ``combined``: their product (a region must be both a likely object and the model's choice).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from vlmfo1 import prompts

SCORE_MODES = ("proposal", "llm", "combined")


def check_score_mode(mode: str) -> str:
    if mode not in SCORE_MODES:
        raise ValueError(f"unknown score mode {mode!r}; choose from {', '.join(SCORE_MODES)}")
    return mode


def select_score(mode: str, proposal_score: float | None, llm_score: float | None) -> float:
    proposal = 1.0 if proposal_score is None else float(proposal_score)
    # A region the answer names always has an emission; None only when scores were not recorded.
    llm = 1.0 if llm_score is None else float(llm_score)
    if mode == "proposal":
        return proposal
    if mode == "llm":
        return llm
    if mode == "combined":
        return proposal * llm
    raise ValueError(f"unknown score mode {mode!r}; choose from {', '.join(SCORE_MODES)}")


@dataclass(frozen=True)
class RegionEmission:
    """A region token in a generated answer: the `<ground>` label it was emitted under (None outside
    a grounded group), its region index and the probability the model gave it there."""

    label: str | None
    index: int
    probability: float


class RegionProbabilities:
    """Looks up the LLM score of a region in one answer."""

    def __init__(self, emissions: Sequence[RegionEmission]):
        self.emissions = list(emissions)

    def of(self, index: int, label: str | None = None) -> float | None:
        """The probability of the region under `label` (its first emission there), else its highest
        probability anywhere in the answer (a label the parser repaired may not match), else None."""
        for emission in self.emissions:
            if emission.index == index and emission.label == label:
                return emission.probability
        anywhere = [e.probability for e in self.emissions if e.index == index]
        return max(anywhere) if anywhere else None


@dataclass(frozen=True)
class GrammarTokenIds:
    """Token ids of the region tokens and grounding tags of one tokenizer (built once per pipeline)."""

    region_of_id: dict[int, int]
    ground_open: int
    ground_close: int
    objects_close: int

    @classmethod
    def from_tokenizer(cls, tokenizer, max_regions: int = prompts.MAX_REGIONS) -> "GrammarTokenIds":
        def token_id(token: str) -> int:
            found = tokenizer.convert_tokens_to_ids(token)
            if found is None or found == tokenizer.unk_token_id or tokenizer.convert_ids_to_tokens(found) != token:
                raise ValueError(f"the tokenizer lacks the FO1 token {token!r} (load it with load_fo1_tokenizer)")
            return found

        regions = {token_id(t): k for k, t in enumerate(prompts.region_tokens(max_regions))}
        return cls(regions, token_id(prompts.GROUND_OPEN), token_id(prompts.GROUND_CLOSE), token_id(prompts.OBJECTS_CLOSE))


def region_emissions(
    token_ids: Sequence[int], probabilities: Sequence[float], tokenizer, ids: GrammarTokenIds
) -> list[RegionEmission]:
    """Walks a generated answer (one probability per token) and records every region token with the
    label of the `<ground>` group it is in. Region and grammar tags are single added tokens."""
    if len(token_ids) != len(probabilities):
        raise ValueError(f"{len(token_ids)} tokens but {len(probabilities)} probabilities")
    emissions: list[RegionEmission] = []
    label_ids: list[int] | None = None  # collecting a label between <ground> and </ground>
    label: str | None = None
    for token, probability in zip(token_ids, probabilities):
        token = int(token)
        if token == ids.ground_open:
            label_ids, label = [], None
        elif token == ids.ground_close and label_ids is not None:
            label = tokenizer.decode(label_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False).strip()
            label_ids = None
        elif token == ids.objects_close:
            label = None
        elif token in ids.region_of_id:
            emissions.append(RegionEmission(label, ids.region_of_id[token], float(probability)))
        elif label_ids is not None:
            label_ids.append(token)
    return emissions
