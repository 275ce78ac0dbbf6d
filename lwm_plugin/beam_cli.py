"""The Beam options on a command line that runs a Beam pipeline (`lwm-make-qa`, `lwm-vision prepare`).

Such a command line passes the arguments it does not know to Beam, in either of Beam's forms:
`--runner=DataflowRunner` or `--runner DataflowRunner` (as the README writes them). One owner for the
check, so both command lines accept the same options and refuse the same mistakes before any work.
A module of its own (under the usual 100 lines) because both CLIs import it before their heavy half:
it imports Beam only when there are Beam options to check, so `--help` and usage errors stay instant.
"""

from __future__ import annotations

from typing import Sequence

from lwm_plugin.model_source import UsageError


def beam_args(extra: Sequence[str], prog: str) -> tuple[str, ...]:
  """`extra` (the arguments `prog` does not know), checked: each option is one of Beam's, and each word
  that is not an option is the value of the option before it. Raises UsageError."""
  stray = [arg for i, arg in enumerate(extra)
           if not arg.startswith("-") and (i == 0 or not extra[i - 1].startswith("-") or "=" in extra[i - 1])]
  if stray:
    raise UsageError(f"unexpected arguments {stray} (neither {prog}'s nor values of Beam options, which start "
                     "with --)")
  if not extra:
    return ()
  # Beam takes about a second to import: only when there are options to check.
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=import-outside-toplevel
  known = PipelineOptions([]).get_all_options()
  for arg in extra:
    if arg.startswith("-"):
      name = arg.lstrip("-").split("=", 1)[0].replace("-", "_")
      if name not in known:
        raise UsageError(f"unrecognized option {arg.split('=', 1)[0]} (neither {prog}'s nor a Beam option)")
  return tuple(extra)
