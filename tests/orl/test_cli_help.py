"""``orl ... --help``: every default said once, none that says nothing."""

import pytest

from orl.cli import main as orl_main


@pytest.mark.parametrize("command", [["data", "generate"], ["data", "select"], ["eval"], ["prune"],
                                     ["report"], ["study", "run"], ["study", "report"]])
def test_help_states_each_default_once(command, capsys):
    with pytest.raises(SystemExit):
        orl_main([*command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and "(default: False)" not in text
    for option in text.split(" --")[1:]:  # an option's help says its default at most once
        assert option.count("(default:") <= 1, option


def test_help_still_gives_real_defaults(capsys):
    with pytest.raises(SystemExit):
        orl_main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "per task; episode i uses variation i (default: 10)" in text
