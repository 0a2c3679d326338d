import doctest

import citrus_v.volume.structures as structures
from citrus_v.volume.structures import names_from_answer, names_from_prompt, structure_names


def test_docstring_examples_hold():
    assert doctest.testmod(structures).failed == 0


def test_names_from_prompts_and_answers():
    assert names_from_prompt("Please segment the liver.") == ["liver"]
    assert names_from_prompt("<image>Outline the aorta; the portal vein & the spleen in this scan.") == ["aorta", "portal vein", "spleen"]
    assert names_from_prompt("What is shown?") == []
    assert names_from_answer("Sure, it is [SEG].") == [""]
    assert structure_names("Segment the liver", 3, ["The liver is [SEG] and the spleen is [SEG]."]) == ["liver", "spleen", "structure_3"]
    assert structure_names("Segment the kidney and the kidney", 2) == ["kidney", "kidney_2"]
