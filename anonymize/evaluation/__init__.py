"""``anonymize evaluate``: what protection did, split by what each part proves.

- :mod:`.pairs`: which protected file belongs to which original;
- :mod:`.quality`: image quality per pair (what protection cost);
- :mod:`.whitebox`: which networks the protect run attacked (provenance) and the
  method's own metrics; per recognizer ``white_box`` is true, false or "unknown";
- :mod:`.blackbox`: re-detection, identity under every recognizer, gallery
  re-identification, and the black-box summary (SPR over recognizers not attacked);
- :mod:`.transforms`: ``--transforms``, the face metrics again after each everyday
  transform (JPEG, resize, crop, blur), each applied once;
- :mod:`.attack_itn`: ``--attack itn``, seed 002's inverse-network attack on pairs the
  attacker makes, against a no-information baseline, and SPR after inversion;
- :mod:`.gates`: ``--fail-under`` (exit 3), also per transform (``spr@jpeg:75=0.9``);
- :mod:`.report` and :mod:`.html_report`: the JSON report and the HTML page;
- :mod:`.run`: :func:`evaluate`, which ties them together.

Example:
    >>> parse_gates("ssim=0.8,spr=0.9")
    {'ssim': 0.8, 'spr': 0.9}
"""
from __future__ import annotations

from .gates import GATES, check_gates, parse_gates
from .pairs import pair_files
from .run import EvaluateOptions, EvaluateResult, build_face_evaluator, evaluate

__all__ = ["EvaluateOptions", "EvaluateResult", "GATES", "build_face_evaluator", "check_gates", "evaluate",
           "pair_files", "parse_gates"]
