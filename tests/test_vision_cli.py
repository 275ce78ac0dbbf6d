"""`lwm-vision`: usage errors before JAX or Beam is imported (rc 2, nothing written); encode -> decode."""

import json
import re
import subprocess
import sys

import av
import numpy as np
import pytest
from PIL import Image

from conftest import REPO, subprocess_env
from helpers.vqgan_files import TINY_GRID as TINY, write_random_vqgan
from lwm_plugin.beam_cli import beam_args
from lwm_plugin.vision import media, vision_cli as cli
from lwm_plugin.vision.vqgan import load_vqgan



@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("cli")
  write_random_vqgan(d / "vq", "diffusers", TINY, seed=0)
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, (300, 260, 3), np.uint8)).save(d / "noise.png")
  Image.fromarray(np.full((256, 256, 3), 90, np.uint8)).save(d / "grey.jpg")
  with av.open(str(d / "fade.mp4"), "w") as c:
    s = c.add_stream("libx264", rate=4)
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    for k in range(3):
      c.mux(s.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), 60 * k, np.uint8), format="rgb24")))
    c.mux(s.encode(None))
  (d / "m.jsonl").write_text('{"image": "noise.png", "caption": "noise"}\n')
  return d


USAGE_CASES = [
    (["encode", "--vqgan", "VQ", "--output", "OUT/c.jsonl", "D/missing.png"], "input 'D/missing.png': no such file"),
    (["encode", "--vqgan", "D/nope", "--output", "OUT/c.jsonl", "D/noise.png"], "--vqgan 'D/nope': no such file"),
    (["encode", "--vqgan", "VQ", "--output", "OUT/c.jsonl", "--fps", "0", "D/noise.png"], "expected a positive float"),
    (["encode", "--vqgan", "VQ", "--output", "OUT/c.jsonl", "--bogus", "D/noise.png"], "unrecognized arguments: --bogus"),
    (["decode", "--vqgan", "VQ", "--input", "D/none.jsonl", "--output", "OUT/d"], "--input 'D/none.jsonl': no such file"),
    (["decode", "--vqgan", "VQ", "--input", "D/m.jsonl", "--output", "D/noise.png"], "exists and is not a directory"),
    (["prepare", "--vqgan", "VQ", "--manifest", "D/m.txt", "--output", "OUT/p"], "--manifest 'D/m.txt': no such file"),
    (["prepare", "--vqgan", "VQ", "--manifest", "D/m.jsonl", "--output", "OUT/p", "--format", "parquet"],
     "invalid choice: 'parquet'"),
    (["prepare", "--vqgan", "VQ", "--manifest", "D/m.jsonl", "--output", "OUT/p", "--tokenizer", "D/m.jsonl"],
     "for --format arrayrecord only"),
    (["prepare", "--vqgan", "VQ", "--manifest", "D/m.jsonl", "--output", "OUT/p", "stray"], "unexpected arguments"),
    (["prepare", "--vqgan", "VQ", "--output", "OUT/p"], "the following arguments are required: --manifest"),
]


def test_usage_errors_exit_2_write_nothing_and_import_neither_jax_nor_beam(files, tmp_path):
  def fill(text):
    return text.replace("VQ", str(files / "vq")).replace("D/", f"{files}/").replace("OUT", str(tmp_path / "out"))
  cases = [([fill(a) for a in argv], fill(message)) for argv, message in USAGE_CASES]
  code = ("import json, sys\nfrom lwm_plugin.vision import vision_cli as cli\n"
          f"cases = json.loads({json.dumps(json.dumps(cases))})\n"
          "for argv, _ in cases:\n"
          "  print('RC', cli.main(argv), file=sys.stderr)\n"
          "print('HEAVY', sorted(m for m in ('jax', 'apache_beam', 'av') if m in sys.modules), file=sys.stderr)\n")
  proc = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), cwd=REPO, capture_output=True, text=True,
                        timeout=120, check=True)
  assert proc.stderr.count("RC 2") == len(cases), proc.stderr
  assert "HEAVY []" in proc.stderr
  errors = [line for line in proc.stderr.splitlines() if line.startswith("lwm-vision: error: ")]
  assert len(errors) == len(cases)
  for (_, message), line in zip(cases, errors):
    assert message in line, (message, line)
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("beam, message", [
    (["--runner", "DataflowRunner", "--project", "P", "--region=R", "--save_main_session"], None),  # the README's form
    (["--runner=DataflowRunner", "--project=P"], None),
    (["--runner", "DataflowRunner", "P"], "unexpected arguments ['P']"),
    (["--projekt", "P"], "unrecognized option --projekt (neither lwm-vision's nor a Beam option)"),
])
def test_prepare_takes_beam_options_in_both_forms(files, tmp_path, beam, message):
  argv = ["prepare", "--vqgan", str(files / "vq"), "--manifest", str(files / "m.jsonl"), "--output", str(tmp_path / "p")]
  args, extra = cli._parser().parse_known_args([*argv, *beam])  # pylint: disable=protected-access
  if message is None:
    cli._check(args, extra)  # pylint: disable=protected-access
    assert extra == beam
  else:
    with pytest.raises(cli.UsageError, match=re.escape(message)):
      cli._check(args, extra)  # pylint: disable=protected-access


def test_the_readme_dataflow_command_parses():
  """The README's `lwm-vision prepare ... --runner DataflowRunner --project PROJECT ...` (Beam options with spaces)."""
  text = (REPO / "README.md").read_text().replace("\\\n", " ")
  [argv] = [line.split("lwm-vision", 1)[1].split() for line in text.splitlines()
            if line.startswith("lwm-vision prepare ") and "--runner" in line]
  _, extra = cli._parser().parse_known_args(argv)  # pylint: disable=protected-access
  assert beam_args(extra, cli.PROG) == ("--runner", "DataflowRunner", "--project", "PROJECT", "--region", "REGION",
                                        "--temp_location", "gs://BUCKET/tmp", "--sdk_container_image", "IMAGE")


def test_bad_fields_specs_and_manifests_are_usage_errors(files, tmp_path, capsys):
  """Checked by the data format's parser and the manifest reader after the heavy import, before any writing."""
  (files / "m.txt").write_text("")
  for manifest, spec, message in [("m.jsonl", "[caption],text", "a spec names the fields 'caption' and 'vision'"),
                                  ("m.jsonl", "[caption],[vision", "malformed item"),
                                  ("m.txt", "[caption],vision", "unknown suffix")]:
    rc = cli.main(["prepare", "--vqgan", str(files / "vq"), "--manifest", str(files / manifest),
                   "--output", str(tmp_path / "p"), "--fields", spec])
    assert rc == 2 and message in capsys.readouterr().err
  assert not (tmp_path / "p").exists()


@pytest.mark.slow  # about 30 s on 2 cores: five VQGAN compilations (encode and decode, several batch sizes)
def test_encode_then_decode(files, tmp_path):
  out = tmp_path / "codes.jsonl"
  inputs = [str(files / n) for n in ("noise.png", "grey.jpg", "fade.mp4")]
  assert cli.main(["encode", "--vqgan", str(files / "vq"), "--output", str(out), *inputs]) == 0
  lines = [json.loads(line) for line in out.read_text().splitlines()]
  assert [line["source"] for line in lines] == inputs
  assert [len(line["vision"]) for line in lines] == [1, 1, 3] and all(len(f) == 256 for f in lines[2]["vision"])
  codec = load_vqgan(files / "vq")
  np.testing.assert_array_equal(np.asarray(lines[2]["vision"]).reshape(3, 16, 16),
                                codec.encode(media.read_video(inputs[2])))
  # A generation line (extra keys, no source) decodes too, named by its line number.
  with out.open("a") as f:
    f.write(json.dumps({"prompt": "a dog", "vision": lines[0]["vision"]}) + "\n")
  assert cli.main(["decode", "--vqgan", str(files / "vq"), "--input", str(out), "--output", str(tmp_path / "px")]) == 0
  assert sorted(p.name for p in (tmp_path / "px").iterdir()) == ["4.png", "fade.gif", "fade.mp4", "grey.png", "noise.png"]
  expected = media.to_uint8(codec.decode(np.asarray(lines[0]["vision"]).reshape(1, 16, 16))[0])
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "px" / "noise.png")), expected)
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "px" / "4.png")), expected)


def test_decode_errors_name_the_line_and_write_nothing(files, tmp_path, capsys):
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps({"source": "a.png", "vision": [1] * 256}) + "\n" + json.dumps({"vision": [1] * 100}) + "\n")
  assert cli.main(["decode", "--vqgan", str(files / "vq"), "--input", str(bad), "--output", str(tmp_path / "px")]) == 1
  assert f"lwm-vision: error: {bad}:2: 'vision' has 100 codes" in capsys.readouterr().err
  beyond = tmp_path / "beyond.jsonl"  # valid LWM codes, beyond this VQGAN's 64-entry codebook
  beyond.write_text(json.dumps({"source": "a.png", "vision": [100] * 256}) + "\n")
  assert cli.main(["decode", "--vqgan", str(files / "vq"), "--input", str(beyond), "--output", str(tmp_path / "px")]) == 1
  assert f"{beyond}:1: codes[0, 0, 0] = 100: codes must be in [0, 64)" in capsys.readouterr().err
  clash = tmp_path / "clash.jsonl"
  clash.write_text("".join(json.dumps({"source": s, "vision": [1] * 256}) + "\n" for s in ("a/x.png", "b/x.jpg")))
  assert cli.main(["decode", "--vqgan", str(files / "vq"), "--input", str(clash), "--output", str(tmp_path / "px")]) == 1
  assert "would both write 'x'" in capsys.readouterr().err
  assert not (tmp_path / "px").exists()


def test_an_unreadable_input_stops_encode_with_its_reason(files, tmp_path, capsys):
  (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
  rc = cli.main(["encode", "--vqgan", str(files / "vq"), "--output", str(tmp_path / "c.jsonl"),
                 str(files / "noise.png"), str(tmp_path / "broken.jpg")])
  assert rc == 1 and f"lwm-vision: error: {tmp_path / 'broken.jpg'}: corrupt: " in capsys.readouterr().err
  assert not (tmp_path / "c.jsonl").exists()
