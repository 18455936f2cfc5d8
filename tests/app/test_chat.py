"""`chat`: the Conversation library (turns read only new tokens, /undo, templates, save + load across a
restart) and the command through a pseudo-terminal (two turns, /undo, /save + /load, Ctrl-C, a bad file)."""
from __future__ import annotations

import sys

import numpy as np
import pexpect
import pytest
from click.testing import CliRunner
from session_helpers import BLOCK_TORCH, PtyChild, text_artifact

from retnet_edge.app.chat import Conversation, StopMatcher, open_conversation
from retnet_edge.cli import main
from retnet_edge.runtimes.generate import SamplingConfig
from retnet_edge.runtimes.state_file import StateFileError

GREEDY = SamplingConfig(temperature=0)
TEMPLATE = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{{ eos_token }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return text_artifact(tmp_path_factory)


def _chat(art, **kw) -> Conversation:
    return open_conversation(str(art), threads=1, sampling=GREEDY, max_new_tokens=kw.pop("n", 10), **kw)


def test_turns_read_only_new_tokens_and_undo_restores(art):
    conv = _chat(art)
    first = conv.send("And God said")
    after_first, state_after_first = list(conv.ids), conv.runner.snapshot()
    assert first.cached_tokens == 0 and first.new_tokens == 10
    reply = []
    second = conv.send("Let there be light", on_text=reply.append)
    assert second.cached_tokens == len(after_first)  # only the new message was read
    assert conv.messages[-1] == {"role": "assistant", "content": "".join(reply)}
    assert conv.text.startswith("And God said") and "\n\nLet there be light" in conv.text
    assert conv.undo() and conv.ids == after_first and len(conv.messages) == 2
    for a, b in zip(conv.runner.state, state_after_first.tensors):  # the very state before the last turn
        np.testing.assert_array_equal(a, b)
    again = []
    conv.send("Let there be light", on_text=again.append)
    assert again == reply
    conv.reset()
    assert conv.ids == [] and not conv.undo()


def test_chat_template_turns_read_only_the_delta(art, tmp_path):
    (tmp_path / "t.jinja").write_text(TEMPLATE)
    conv = _chat(art, chat_template=str(tmp_path / "t.jinja"))
    conv.send("hello")
    assert conv.text.startswith("<|user|>hello\n<|assistant|>")
    before = len(conv.ids)
    assert conv.send("again").cached_tokens == before


def test_save_and_load_across_a_restart(art, tmp_path_factory, tmp_path):
    conv = _chat(art)
    conv.send("In the beginning")
    conv.save(tmp_path / "a.state")
    expected = []
    conv.send("and the earth", on_text=expected.append)
    fresh = _chat(art)  # a new process would see the same: the fingerprint is the artifact's
    fresh.load(tmp_path / "a.state")
    assert fresh.ids == conv.undo_stack[-1].ids and fresh.messages == conv.undo_stack[-1].messages
    got = []
    stats = fresh.send("and the earth", on_text=got.append)
    assert got == expected and stats.cached_tokens == len(conv.undo_stack[-1].ids)
    blob = bytearray((tmp_path / "a.state").read_bytes())
    blob[-7] ^= 0x40
    (tmp_path / "b.state").write_bytes(bytes(blob))
    with pytest.raises(StateFileError, match="checksum"):
        fresh.load(tmp_path / "b.state")
    other = _chat(text_artifact(tmp_path_factory, "int4"))
    with pytest.raises(StateFileError, match="another artifact"):
        other.load(tmp_path / "a.state")


def test_chat_reads_piped_input_and_refuses_bad_options(art, tmp_path):
    args = ["chat", str(art), "--temperature", "0", "-n", "4", "--save-dir", str(tmp_path)]
    res = CliRunner().invoke(main, args, input="hello\n/save x\n/save ../x\n")
    assert res.exit_code == 0, res.output
    assert "[4 tokens" in res.stderr and "[saved x" in res.stderr and "letters, digits" in res.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["x.state"]
    res = CliRunner().invoke(main, [*args[:2], "-n", "0"])
    assert res.exit_code == 1 and res.stderr.strip().splitlines() == ["Error: -n/--max-new-tokens must be >= 1, got 0"]
    res = CliRunner().invoke(main, ["chat", str(tmp_path / "nope")])
    assert res.exit_code == 1 and "does not exist" in res.stderr
    assert CliRunner().invoke(main, [*args, "--cache-mb", "-1"]).exit_code == 2
    (tmp_path / "bad.jinja").write_text("{% for m in messages %}{{ m.content }")
    res = CliRunner().invoke(main, [*args, "--chat-template", str(tmp_path / "bad.jinja")])
    assert res.exit_code == 1 and res.stderr.startswith("Error: the chat template failed")


def test_stop_matcher_holds_back_a_possible_stop():
    m = StopMatcher(["END", "\n\n"])
    assert m.feed("abc E") == "abc " and m.feed("N") == "" and m.feed("x") == "ENx"
    assert m.feed("y\n") == "y" and m.feed("\nmore") == "" and m.stopped and m.flush() == ""


def _spawn(args: list[str], block_torch: bool = False) -> PtyChild:
    script = (BLOCK_TORCH if block_torch else "import sys\n") + (
        "from retnet_edge.cli import main\nsys.argv = ['retnet-edge'] + sys.argv[1:]\nmain()\n")
    child = PtyChild([sys.executable, "-c", script, "chat", *args], timeout=60)
    child.expect("> ")
    return child


def _turn(child: PtyChild, text: str) -> tuple[str, str]:
    """Send a message; (the reply, the stats line)."""
    child.sendline(text)
    child.expect(r"\[[^\]]*cached\]\r\n")
    reply = child.before.split(text, 1)[1].strip()
    stats = child.after
    child.expect("> ")
    return reply, stats


def test_chat_in_a_terminal(tmp_path):
    """The eager demo (~100 tokens/s): two turns, /undo, /save + /load, Ctrl-C mid-reply, a corrupt file."""
    child = _spawn(["demo", "--temperature", "0", "-n", "10", "--threads", "1", "--save-dir", str(tmp_path)])
    reply1, stats1 = _turn(child, "And God said")
    assert reply1.startswith("unto") and "prompt: 4 new, 0 cached" in stats1
    reply2, stats2 = _turn(child, "And Moses")
    assert "cached" in stats2 and "0 cached" not in stats2
    child.sendline("/undo")
    child.expect(r"\[undone\]")
    assert _turn(child, "And Moses")[0] == reply2  # the same state, so the same greedy reply
    child.sendline("/save first")
    child.expect(r"\[saved first: (\d+) tokens")
    saved = int(child.match.group(1))
    child.sendline("/reset")
    child.expect(r"\[new conversation\]")
    child.sendline("/load first")
    child.expect(r"\[loaded first")
    assert f"{saved} cached" in _turn(child, "and")[1]
    blob = bytearray((tmp_path / "first.state").read_bytes())
    blob[-3] ^= 0xFF
    (tmp_path / "first.state").write_bytes(bytes(blob))
    child.sendline("/load first")
    child.expect(r"Error: [^\r\n]*checksum[^\r\n]*\r\n")
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_c_stops_the_reply_not_the_chat(tmp_path):
    """A 2,000-token reply on the demo is stopped by Ctrl-C; the chat goes on and ends with Ctrl-D."""
    child = _spawn(["demo", "--temperature", "0", "-n", "2000", "--threads", "1", "--save-dir", str(tmp_path)])
    child.sendline("And God said")
    child.expect("LORD")
    child.sendintr()
    child.expect(r"\[stopped\] \[\d+ tokens")
    child.expect("> ")
    child.sendintr()  # at the prompt: a fresh line, not an exit
    child.expect("> ")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_chat_on_onnx_needs_no_torch(art, tmp_path):
    child = _spawn([str(art), "--temperature", "0", "-n", "5", "--save-dir", str(tmp_path)], block_torch=True)
    assert "5 tokens" in _turn(child, "hello")[1]
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
