"""Operations: the ``apex-metrics`` command line and the tooling around the pipeline.

``cli.py`` is the root command and ``main()``; each ``*_commands.py`` holds one group of
commands and stays thin (parse, resolve settings, call the part, print). ``demo.py``,
``embedded_pg.py`` and ``traffic.py`` are what ``apex-metrics demo`` runs; ``verify.py`` holds
the gates of ``apex-metrics verify``. Nothing in the core imports this package.
"""
