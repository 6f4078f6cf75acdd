"""The recipe schema: one YAML file = one distillation experiment.

A recipe names a task, its teachers (cards in ``teachers/`` with weights), how the student is built and
initialised, the objective (a weighted list of registered terms), training settings, seeds and DeepSpeed
settings.  Parsing is strict (see :mod:`harness.schema`) and checks what the recipe alone can tell;
:func:`harness.plan.load` reads the file, resolves its teachers and checks it against the cards.
"""
from __future__ import annotations

from pydantic import Field, model_validator

from harness.losses import TERMS
from harness.registry import UnknownName
from harness.recipe_parts import (Assistant, ConfigStudent, DeepSpeedSettings, Phase, PretrainedStudent,
                                  SpeedSettings, Student, TeacherLayersStudent, TeacherRef, TermSpec, Training,
                                  TrainingOverrides)
from harness.schema import Strict
from harness.tasks import get_task
from harness.weighting import NO_REGRESSION, WeightingSpec


class Recipe(Strict):
    name: str | None = Field(None, description="run name; default: the file's path under recipes/")
    description: str = ""
    task: str
    teachers: list[TeacherRef] = Field(default_factory=list)
    teacher_weighting: WeightingSpec = Field(
        WeightingSpec(), description="how several teachers are weighted per example in task phases (corpus "
                                     "phases use the static weights: they have no labels and no task logits)")
    student: Student
    objective: list[TermSpec] | None = Field(None, min_length=1, description="a one-phase recipe's terms")
    phases: list[Phase] | None = Field(None, min_length=1, description="several phases (instead of 'objective')")
    training: Training = Training()
    deepspeed: DeepSpeedSettings = DeepSpeedSettings()
    speed: SpeedSettings = SpeedSettings()
    assistants: list[Assistant] = Field(default_factory=list, description="teacher-assistant stages, trained "
                                                                         "in order before the student")
    cofinetune: TrainingOverrides | None = Field(
        None, description="MT-BERT teacher co-finetuning: the (card) teachers are fine-tuned jointly with one shared "
                          "pooling and prediction layer; the mapping overrides the first card's fine-tuning settings "
                          "({} for none); absent: each teacher is fine-tuned alone")

    @model_validator(mode="after")
    def _check(self):
        try:
            get_task(self.task)
        except UnknownName as e:
            raise ValueError(f"task: {e}") from None
        self._check_stages()
        if self.teacher_weighting.scheme in NO_REGRESSION and get_task(self.task).is_regression:
            raise ValueError(f"teacher_weighting.scheme: {self.teacher_weighting.scheme} needs class "
                             f"distributions; {self.task} is a regression task (use mtbert, static or uniform)")
        if (self.objective is None) == (self.phases is None):
            raise ValueError("give either 'objective' (one phase) or 'phases', not both or neither")
        for where, phase in self.named_phases():
            self._check_phase(where, phase)
        last_where, last = self.named_phases()[-1]
        if last.corpus is not None or last.progressive is not None:
            raise ValueError(f"{last_where}: the last phase must train on the task (no corpus, not progressive) "
                             "so the classifier is trained")
        if isinstance(self.student, (TeacherLayersStudent, ConfigStudent)) and self.student_card is None:
            field = "card" if isinstance(self.student, TeacherLayersStudent) else "tokenizer_card"
            if self.teachers:  # the first teacher is a stage: it has no card to default to
                raise ValueError(f"student.{field}: needed when the first teacher is a stage (it has no card "
                                 "to default to)")
            raise ValueError(f"student.{self.student.init} needs a card: name one, or list a teacher")
        return self

    def _check_stages(self) -> None:
        """Assistant names are unique, and every {stage: name} names an earlier assistant."""
        names = [a.name for a in self.assistants]
        for i, a in enumerate(self.assistants):
            if a.name in names[:i]:
                raise ValueError(f"assistants[{i}].name: {a.name!r} is used twice")
            for j, t in enumerate(a.teachers):
                if t.stage is not None and t.stage not in names[:i]:
                    raise ValueError(f"assistants[{i}].teachers[{j}].stage: {t.stage!r} is not an earlier "
                                     f"assistant (earlier: {names[:i] or 'none'})")
        for j, t in enumerate(self.teachers):
            if t.stage is not None and t.stage not in names:
                raise ValueError(f"teachers[{j}].stage: no assistant named {t.stage!r} (assistants: {names or 'none'})")

    def _check_phase(self, where: str, phase: Phase) -> None:
        """Its terms have the teachers they read and the data they need (labels, or masked text)."""
        needs = [t.term for t in phase.objective if TERMS.get(t.term).needs_teacher]
        if needs and not self.teachers:
            raise ValueError(f"{where}objective: terms {needs} need a teacher, but 'teachers' is empty")
        for i, t in enumerate(phase.objective):
            level = TERMS.get(t.term).level
            if phase.corpus is not None and level == "logits":
                raise ValueError(f"{where}objective[{i}]: {t.term} needs task labels or logits; a corpus "
                                 "phase has neither (use mlm and intermediate terms)")
            if phase.corpus is None and level == "mlm":
                raise ValueError(f"{where}objective[{i}]: {t.term} belongs in a corpus phase")

    # -- derived --------------------------------------------------------------------------------------
    @property
    def canonical_task(self) -> str:
        return get_task(self.task).name

    @property
    def student_card(self) -> str | None:
        """The card whose checkpoint (cut student) or tokenizer (config student) the student uses: its
        own ``card`` / ``tokenizer_card``, else the first teacher's card; None for a pretrained student,
        or when neither is there (the first teacher is a stage)."""
        s = self.student
        own = s.card if isinstance(s, TeacherLayersStudent) else \
            s.tokenizer_card if isinstance(s, ConfigStudent) else None
        if isinstance(s, PretrainedStudent):
            return None
        return own or (self.teachers[0].card if self.teachers else None)

    def named_phases(self) -> list[tuple[str, Phase]]:
        """[(field prefix for messages, phase)]; a one-phase recipe is the phase 'task'."""
        if self.phases is None:
            return [("", Phase(name="task", objective=self.objective or []))]
        return [(f"phases[{i}].", p) for i, p in enumerate(self.phases)]

    def reads_teachers(self) -> bool:
        """Whether any phase has a term that reads a teacher (the no-KD baseline has none)."""
        return any(TERMS.get(t.term).needs_teacher for _, p in self.named_phases() for t in p.objective)

    def stage_recipe(self, name: str) -> "Recipe":
        """Assistant ``name`` as a recipe of its own, with just the earlier assistants it builds on."""
        by_name = {a.name: a for a in self.assistants}
        keep, todo = set(), [name]
        while todo:
            n = todo.pop()
            if n not in keep:
                keep.add(n)
                todo += [t.stage for t in by_name[n].teachers if t.stage is not None]
        a = by_name[name]
        return Recipe.model_validate({
            "name": f"stages/{self.canonical_task}/{name}", "task": self.task,
            "teachers": [t.model_dump() for t in a.teachers], "teacher_weighting": a.teacher_weighting.model_dump(),
            "student": a.student.model_dump() | {"name": a.student.name or name}, "objective": a.objective and [t.model_dump() for t in a.objective],
            "phases": a.phases and [p.model_dump() for p in a.phases],
            "training": a.training.over(self.training.model_dump()), "deepspeed": self.deepspeed.model_dump(),
            "speed": self.speed.model_dump(),
            "assistants": [x.model_dump() for x in self.assistants if x.name in keep and x.name != name]})

    def phase_training(self, phase: Phase) -> Training:
        return Training.model_validate(phase.training.over(self.training.model_dump()))

    def resolved(self) -> dict:
        """The recipe with every default filled in: what a run record stores and hashes."""
        d = self.model_dump(mode="json")
        d["task"] = self.canonical_task
        return d
