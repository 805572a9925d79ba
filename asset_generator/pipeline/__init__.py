"""``pipeline``: a whole asset set from one YAML spec (cli-contract §5 ``pipeline``).

spec (YAML → typed groups and assets), plan (prompts, seeds, paths, parameters: one function
for ``--dry-run`` and the run), manifest (resume), run (workers over the one generation path),
control (cancel and status of pipelines). Nothing here imports click or rich.
"""
