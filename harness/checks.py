"""Checks of a parsed recipe against the world: teacher cards exist, student layers fit, every
objective term builds for the models' shapes (layer maps, widths, heads), tokenizers agree where terms
compare positions, co-finetuning is possible.  Nothing here loads model weights."""
from __future__ import annotations

import json
from pathlib import Path

from harness.losses import TERMS, Shape, Term, TermError
from harness.recipe import Recipe
from harness.recipe_parts import ConfigStudent, Phase, PretrainedStudent, TeacherLayersStudent
from harness.schema import ConfigError


def recipe_cards(recipe: Recipe, path: Path, teachers_dir: Path | None = None, where: str = "") -> dict:
    """{field: Card} for every card the recipe names itself (not its assistants')."""
    from harness.teachers import find_card, load_card  # local: teachers imports recipe (recipe_hash)

    s = recipe.student
    refs = {f"teachers[{i}].card": t.card for i, t in enumerate(recipe.teachers) if t.card is not None}
    if isinstance(s, TeacherLayersStudent) and s.card:
        refs["student.card"] = s.card
    if isinstance(s, ConfigStudent) and s.tokenizer_card:
        refs["student.tokenizer_card"] = s.tokenizer_card
    cards = {}
    for field, ref in refs.items():
        try:
            cards[field] = load_card(find_card(ref, path.parent, teachers_dir))
        except ConfigError as e:
            raise ConfigError(f"{path}: {where}{field}: {e}") from None
    return cards


def check_references(recipe: Recipe, path: Path, teachers_dir: Path | None = None, where: str = "") -> None:
    """Cards exist, student layers fit, every term builds for the models' shapes, tokenizers agree
    where terms compare positions; each assistant stage is checked the same way first."""
    for i, a in enumerate(recipe.assistants):
        if where == "":  # a stage's own recipe lists the earlier stages it needs: check each once
            check_references(recipe.stage_recipe(a.name), path, teachers_dir, f"assistants[{i}].")
    cards = recipe_cards(recipe, path, teachers_dir, where)
    s = recipe.student
    if isinstance(s, TeacherLayersStudent):
        cut = cards["student.card" if s.card else "teachers[0].card"]  # the card whose layers are kept
        bad = [i for i in s.layers if i >= cut.layers]
        if bad:
            raise ConfigError(f"{path}: {where}student.layers: {bad} past the depth of {cut.name} "
                              f"({cut.layers} layers, indices 0..{cut.layers - 1})")
    for i, t in enumerate(recipe.teachers):
        if t.card is not None:
            try:
                cards[f"teachers[{i}].card"].finetune_for(recipe.canonical_task, t.finetune)
            except ConfigError as e:
                raise ConfigError(f"{path}: {where}teachers[{i}].finetune: {e}") from None
    if recipe.cofinetune is not None:
        _check_cofinetune(recipe, cards, f"{path}: {where}")
    # build every term for the models' shapes: layer maps, widths and head counts are checked here
    student = student_shape(recipe, cards)
    teachers = teacher_shapes(recipe, path, teachers_dir, cards)
    if student is not None and None not in teachers:
        for phase_where, phase in recipe.named_phases():
            try:
                build_terms(phase, student, teachers, where + phase_where)
            except ConfigError as e:
                raise ConfigError(f"{path}: {e}") from None
    check_tokenizers(recipe, path, teachers_dir, cards, where)


def _check_cofinetune(recipe: Recipe, cards: dict, where: str) -> None:
    from harness.cofinetune import HEADS  # local: it imports the training code, which imports this module

    teachers = [cards.get(f"teachers[{i}].card") for i in range(len(recipe.teachers))]
    if len(teachers) < 2 or None in teachers:
        raise ConfigError(f"{where}cofinetune: needs two or more teachers, all cards (not stages)")
    if any(t.finetune for t in recipe.teachers):
        raise ConfigError(f"{where}cofinetune: the teachers are fine-tuned together; put fine-tuning overrides in "
                          "cofinetune, not in teachers[].finetune")
    widths = {c.name: c.hidden for c in teachers}
    if len(set(widths.values())) > 1:
        raise ConfigError(f"{where}cofinetune: the shared pooling and prediction layer need one hidden width, but "
                          f"the teachers have {widths}")
    odd = [c.name for c in teachers if c.architecture not in HEADS]
    if odd:
        raise ConfigError(f"{where}cofinetune: no known classification head for {odd} (supported: {sorted(HEADS)})")
    try:
        teachers[0].finetune_for(recipe.canonical_task, recipe.cofinetune)
    except ConfigError as e:
        raise ConfigError(f"{where}cofinetune: {e}") from None


def teacher_shapes(recipe: Recipe, path: Path, teachers_dir: Path | None, cards: dict) -> list[Shape | None]:
    """Each teacher's shape: its card's, or the student shape of the assistant stage it names."""
    out = []
    for i, t in enumerate(recipe.teachers):
        if t.card is not None:
            c = cards[f"teachers[{i}].card"]
            out.append(Shape(c.layers, c.hidden, c.heads))
        else:
            stage = recipe.stage_recipe(t.stage)
            out.append(student_shape(stage, recipe_cards(stage, path, teachers_dir)))
    return out


def tokenizer_source(recipe: Recipe, cards: dict) -> str | None:
    """The local folder whose tokenizer the recipe's student uses (None: not installed here / Hub)."""
    s = recipe.student
    if isinstance(s, PretrainedStudent):
        return s.checkpoint if Path(s.checkpoint).is_dir() else None
    key = ("student.card" if s.card else "teachers[0].card") if isinstance(s, TeacherLayersStudent) else \
        ("student.tokenizer_card" if s.tokenizer_card else "teachers[0].card")
    p = cards[key].local_checkpoint()
    return str(p) if p is not None else None


def check_tokenizers(recipe: Recipe, path: Path, teachers_dir: Path | None, cards: dict, where: str = "") -> None:
    """Intermediate terms compare the models position by position, so every teacher must tokenize as
    the student does; logit-level terms work across tokenizers.  Checked where the checkpoints are
    installed here (a Hub-only one is checked when the run loads it)."""
    from harness.models import tokenizer_id_at  # local: models imports this module

    mine = tokenizer_source(recipe, cards)
    if mine is None:
        return
    other = []
    for i, t in enumerate(recipe.teachers):
        if t.card is not None:
            p = cards[f"teachers[{i}].card"].local_checkpoint()
            src = str(p) if p is not None else None
        else:
            stage = recipe.stage_recipe(t.stage)
            src = tokenizer_source(stage, recipe_cards(stage, path, teachers_dir))
        if src is not None and tokenizer_id_at(src) != tokenizer_id_at(mine):
            other.append(t.label)
    if not other:
        return
    for phase_where, phase in recipe.named_phases():
        for i, spec in enumerate(phase.objective):
            if TERMS.get(spec.term).level == "features":
                raise ConfigError(
                    f"{path}: {where}{phase_where}objective[{i}]: {spec.term} compares the models token by token, "
                    f"but {', '.join(other)} tokenize{'s' if len(other) == 1 else ''} text differently from the "
                    "student (another vocabulary or other special tokens), so their positions do not line up; across "
                    "tokenizers use logit-level terms (hinton_kd, mixkd), or a student with the teacher's tokenizer")


def student_shape(recipe: Recipe, cards: dict) -> Shape | None:
    """The student's depth, width and heads, known without loading weights (None: a Hub checkpoint)."""
    s = recipe.student
    if isinstance(s, ConfigStudent):
        return Shape(s.layers, s.hidden, s.heads)
    if isinstance(s, TeacherLayersStudent):
        c = cards["student.card" if s.card else "teachers[0].card"]
        return Shape(len(s.layers), c.hidden, c.heads)
    cfg = Path(s.checkpoint) / "config.json"
    if cfg.is_file():
        c = json.loads(cfg.read_text())
        return Shape(c["num_hidden_layers"], c["hidden_size"], c["num_attention_heads"])
    return None


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
    return out
