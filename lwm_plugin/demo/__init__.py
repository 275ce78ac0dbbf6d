"""The main job (`make demo`): the tiny LWM stage chain trained, exported and evaluated on one CPU machine.

`plan` says what runs, `run` runs it, `progress` prints it, `report` writes `report.md`.
"""
