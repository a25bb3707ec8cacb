"""One-command reproduction of the paper's figures: ``python -m train.experiments NAME``.

NAME is one of ``fig8a``, ``fig8b``, ``fig10``, ``fig11``, ``fig12``, ``table2`` (see
``docs/experiments.md``). Each experiment prepares its shard folders with ``ppdata`` (cached
under ``--work`` by content key), trains every condition with ``train.resnet`` /
``train.densenet`` (resumable condition by condition) and writes ``results/NAME.csv``,
``results/NAME.md`` and ``results/NAME.png``.

Modules: ``plan`` (what each experiment runs), ``source`` (``--data``), ``runner`` (paths,
cache, commands, execution), ``report`` (CSV, markdown, bar chart), ``__main__`` (the command).
"""
