"""Checks of a resolved recipe against the world: student layers fit the card they are cut from, every
objective term builds for the models' shapes (layer maps, widths, heads), tokenizers agree where terms
compare positions, co-finetuning is possible.  Nothing here loads model weights.

Every check takes a :class:`~harness.resolved.RunPlan` (cards already loaded) and raises one
``ConfigError`` naming the file and the field.
"""
from __future__ import annotations

from harness.mlm_check import check_mlm_teachers
from harness.losses import TERMS, Shape, Term, TermError
from harness.losses.distilbert import share_mlm_head
from harness.models import HEADS, tokenizer_id_at
from harness.recipe_parts import Phase, TeacherLayersStudent
from harness.resolved import RunPlan
from harness.schema import ConfigError


def check_plan(plan: RunPlan, where: str = "") -> None:
    """Each assistant stage first (with its field prefix), then this recipe's own references."""
    if plan.kind == "student":  # a stage's plan holds just the earlier stages it needs: check each once
        for i, a in enumerate(plan.recipe.assistants):
            check_plan(plan.stages[a.name], f"assistants[{i}].")
    head = f"{plan.path}: {where}"
    s = plan.recipe.student
    if isinstance(s, TeacherLayersStudent):
        cut = plan.student_card  # the card whose layers are kept
        bad = [i for i in s.layers if i >= cut.layers]
        if bad:
            raise ConfigError(f"{head}student.layers: {bad} past the depth of {cut.name} "
                              f"({cut.layers} layers, indices 0..{cut.layers - 1})")
    for i, t in enumerate(plan.teachers):
        if t.card is not None:
            try:
                t.finetune
            except ConfigError as e:
                raise ConfigError(f"{head}teachers[{i}].finetune: {e}") from None
    if plan.recipe.cofinetune is not None:
        check_cofinetune(plan, head)
    student, teachers = plan.student_shape, [t.shape for t in plan.teachers]
    if student is not None and None not in teachers:  # layer maps, widths and head counts
        for phase_where, phase in plan.recipe.named_phases():
            try:
                build_terms(phase, student, teachers, where + phase_where)
            except ConfigError as e:
                raise ConfigError(f"{plan.path}: {e}{failing_teachers(plan, phase, student)}") from None
    check_tokenizers(plan, head)
    check_mlm_teachers(plan, head)


def failing_teachers(plan: RunPlan, phase: Phase, student: Shape) -> str:
    """With several teachers, which of them a term cannot be built for (a width without projection, a
    head count, a layer map past its depth), since the term's own message names no teacher."""
    if len(plan.teachers) < 2:
        return ""
    bad = []
    for k, t in enumerate(plan.teachers):
        try:
            build_terms(phase, student, [t.shape])
        except ConfigError:
            bad.append(f"teachers[{k}] ({t.label})")
    return f"; it cannot be built for {', '.join(bad)}" if bad else ""


def check_cofinetune(plan: RunPlan, head: str) -> None:
    cards = [t.card for t in plan.teachers]
    if len(cards) < 2 or None in cards:
        raise ConfigError(f"{head}cofinetune: needs two or more teachers, all cards (not stages)")
    if any(set(t.ref.finetune.root) - {"seed"} for t in plan.teachers):
        raise ConfigError(f"{head}cofinetune: the teachers are fine-tuned together; put fine-tuning overrides in "
                          "cofinetune, not in teachers[].finetune (which may hold only a seed: that teacher's own "
                          "dropout stream in the joint run)")
    widths = {c.name: c.hidden for c in cards}
    if len(set(widths.values())) > 1:
        raise ConfigError(f"{head}cofinetune: the shared pooling and prediction layer need one hidden width, but "
                          f"the teachers have {widths}")
    odd = [c.name for c in cards if c.architecture not in HEADS]
    if odd:
        raise ConfigError(f"{head}cofinetune: no known classification head for {odd} (supported: {sorted(HEADS)})")
    try:
        cards[0].finetune_for(plan.task.name, plan.recipe.cofinetune)
    except ConfigError as e:
        raise ConfigError(f"{head}cofinetune: {e}") from None
    check_cofinetuned_copies(plan, head)


def check_cofinetuned_copies(plan: RunPlan, head: str) -> None:
    """Copies of one card, co-finetuned, differ only by their dropout seeds: each needs one seed of its own,
    or two entries would be one model trained twice (and one cache folder written twice)."""
    for i, t in enumerate(plan.teachers):
        if not isinstance(t.ref.finetune.root.get("seed", 0), int):
            raise ConfigError(f"{head}teachers[{i}].finetune.seed: one seed per co-finetuned teacher, not a list")
    seeds = plan.cofinetune_seeds() or [None] * len(plan.teachers)
    seen: dict = {}
    for i, (t, seed) in enumerate(zip(plan.teachers, seeds)):
        j = seen.setdefault((t.card.name, seed), i)
        if j != i:
            same = "the joint run's seed" if seed is None else f"dropout seed {seed}"
            raise ConfigError(f"{head}teachers[{i}]: {t.card.name} with {same}, as teachers[{j}]: co-finetuned, "
                              "the two would be one model; give each copy its own finetune: {seed: N}")


def check_tokenizers(plan: RunPlan, head: str) -> None:
    """Intermediate terms compare the models position by position, so every teacher must tokenize as
    the student does; logit-level terms work across tokenizers.  Checked where the checkpoints are
    installed here (a Hub-only one is checked when the run loads it)."""
    mine = plan.tokenizer_source
    if mine is None:
        return
    other = [t.label for t in plan.teachers
             if t.tokenizer_source is not None and tokenizer_id_at(t.tokenizer_source) != tokenizer_id_at(mine)]
    if not other:
        return
    for phase_where, phase in plan.recipe.named_phases():
        for i, spec in enumerate(phase.objective):
            cls = TERMS.get(spec.term)
            if cls.level == "features" or (cls.level == "mlm" and cls.needs_teacher):  # positions or vocabularies
                raise ConfigError(
                    f"{head}{phase_where}objective[{i}]: {spec.term} compares the models token by token, "
                    f"but {', '.join(other)} tokenize{'s' if len(other) == 1 else ''} text differently from the "
                    "student (another vocabulary or other special tokens), so their positions do not line up; across "
                    "tokenizers use logit-level terms (hinton_kd, mixkd), or a student with the teacher's tokenizer")


def build_terms(phase: Phase, student: Shape, teachers: list[Shape], where: str = "") -> list[tuple[Term, float]]:
    """The phase's terms built for these shapes; a TermError becomes a ConfigError naming the field."""
    out = []
    for i, spec in enumerate(phase.objective):
        cls = TERMS.get(spec.term)
        try:
            term = cls(spec.params, student, teachers if cls.needs_teacher else [])
        except TermError as e:
            raise ConfigError(f"{where}objective[{i}].{e} ({spec.term})") from None
        if phase.progressive is not None and type(term).restrict is Term.restrict:
            raise ConfigError(f"{where}objective[{i}]: {spec.term} has no layer map, so it cannot be "
                              "trained block by block in a progressive phase")
        out.append((term, spec.weight))
    share_mlm_head([t for t, _ in out])  # mlm and mlm_kd read one student MLM head, as in DistilBERT
    return out
