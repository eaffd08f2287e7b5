"""The simulator: a procedurally generated task world with simulated labelers.

No machine here can download a pretrained model or a data set, so the default run brings its own
world: entities and their facts (:mod:`.entities`), a pretraining corpus (:mod:`.corpus`), prompts
with demonstrations and a gold score, simulated labelers (:mod:`.labelers`), files in the
user-facing formats (:mod:`.files`); the reward model's error breakdown is a tool
(``instructgpt_jax/tools/breakdown.py``), since it runs the trained models.
Two worlds, chosen by ``config.data.world``:

* ``paper`` (the default, :mod:`.paper`, :mod:`.tasks`, :mod:`.scoring`): the prompt mix of the
  paper's Table 1, open-ended tasks judged as the paper's labelers judged them (App. B), public
  NLP tasks for the reward model's initialisation (:mod:`.nlp_tasks`);
* ``knowledge`` (:mod:`.knowledge`, :mod:`.knowledge_tasks`): the first world, most prompts graded
  on recalling facts.

Everything is pure Python and deterministic from one integer seed.
"""
