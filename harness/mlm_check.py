"""Which teachers a masked-LM distillation term can read: a light module (no model code), so that
``validate`` and ``study plan`` check recipes without importing transformers' model classes."""
from __future__ import annotations

from harness.losses import TERMS
from harness.recipe_parts import Phase
from harness.resolved import RunPlan
from harness.schema import ConfigError

# what validate says of a card without a head: the shipped cards are all of that kind
NO_HEAD_HINT = ("sentence encoders such as the offline all-MiniLM-L6-v2 and all-mpnet-base-v2 ship without "
                "one; declare mlm_head on a card whose checkpoint has it (README, Teachers)")


def reads_teacher_mlm(phase: Phase) -> list[str]:
    """The phase's terms that read the teachers' masked-LM distribution (masked-LM level, with a teacher)."""
    return [t.term for t in phase.objective if TERMS.get(t.term).level == "mlm" and TERMS.get(t.term).needs_teacher]


def check_mlm_teachers(plan: RunPlan, head: str) -> None:
    """Every teacher of a phase with such a term is a card that declares an MLM head."""
    for where, phase in plan.recipe.named_phases():
        terms = reads_teacher_mlm(phase)
        for i, t in enumerate(plan.teachers if terms else []):
            if t.card is None:
                raise ConfigError(f"{head}{where}objective: {terms[0]} reads the teacher's masked-LM distribution, "
                                  f"but teachers[{i}] is {t.label}, a trained classifier without an MLM head")
            if t.card.mlm_head is None:
                raise ConfigError(f"{head}teachers[{i}]: card {t.card.name} declares no mlm_head, so {terms[0]} "
                                  f"({where}objective) has no teacher masked-LM distribution to read; {NO_HEAD_HINT}")
