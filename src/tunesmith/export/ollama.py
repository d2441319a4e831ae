"""An Ollama `Modelfile` whose TEMPLATE (Go template syntax) renders chats as the run's Jinja chat template does.

Jinja cannot be translated in general, so the template is *measured*: rendering sentinel messages reveals,
for each role, the text before and after the content, the generation prompt, and any system message the
template inserts when the chat has none. That shape is written as a Go template, then checked by rendering
longer conversations both ways. A template that does not fit the shape (one that rewrites earlier turns,
say) gets no TEMPLATE line: Ollama then falls back on the chat template stored in the GGUF file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

ROLES = ("system", "user", "assistant")
_MARK = "\u2063tunesmith-{}\u2063"  # invisible separators make accidental matches impossible


@dataclass(frozen=True)
class ChatShape:
    """A chat template as literal text around each message's content."""

    before: dict[str, str]  # role -> text before the content
    after: dict[str, str]  # role -> text after the content
    generation: str  # text that asks the model for a reply
    default_system: str  # text inserted when the first message is not a system message


def measure(tokenizer: PreTrainedTokenizerBase) -> ChatShape | None:
    """The template's per-role shape, or None when it is not one (checked on multi-turn chats)."""
    try:
        shape = _probe(tokenizer)
    except Exception:  # a template may refuse a probe (e.g. a lone system message); then it is no shape of ours
        return None
    if shape is None:
        return None
    checks = [["system", "user", "assistant", "user"], ["user", "assistant", "user", "assistant", "user"]]
    for roles in checks:
        msgs = [{"role": r, "content": f"{r} {i} text"} for i, r in enumerate(roles)]
        for generation in (True, False):
            if _render(tokenizer, msgs, generation) != render(shape, msgs, generation):
                return None
    return shape


def _probe(tokenizer: PreTrainedTokenizerBase) -> ChatShape | None:
    s, u, a = (_MARK.format(r) for r in ROLES)
    sys_only = _render(tokenizer, [{"role": "system", "content": s}], False)
    sys_user = _render(tokenizer, [{"role": "system", "content": s}, {"role": "user", "content": u}], False)
    user = _render(tokenizer, [{"role": "user", "content": u}], False)
    user_gen = _render(tokenizer, [{"role": "user", "content": u}], True)
    chat = _render(tokenizer, [{"role": "user", "content": u}, {"role": "assistant", "content": a}], False)
    if not (sys_user.startswith(sys_only) and user_gen.startswith(user) and chat.startswith(user)):
        return None
    before_s, after_s = sys_only.split(s)
    before_u, after_u = sys_user[len(sys_only):].split(u)
    if not user.endswith(before_u + u + after_u):
        return None
    before_a, after_a = chat[len(user):].split(a)
    return ChatShape(before={"system": before_s, "user": before_u, "assistant": before_a},
                     after={"system": after_s, "user": after_u, "assistant": after_a},
                     generation=user_gen[len(user):], default_system=user[: -len(before_u + u + after_u)])


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], generation: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)


def render(shape: ChatShape, messages: Sequence[dict[str, str]], generation: bool) -> str:
    """What the Go template produces for `messages` (the reference for the check)."""
    head = shape.default_system if not messages or messages[0]["role"] != "system" else ""
    body = "".join(shape.before[m["role"]] + m["content"] + shape.after[m["role"]] for m in messages)
    return head + body + (shape.generation if generation else "")


def go_template(shape: ChatShape) -> str:
    """The shape in Ollama's Go template syntax (no whitespace trimming: every character is literal)."""
    parts = []
    if shape.default_system:
        parts.append('{{ if or (not .Messages) (ne (index .Messages 0).Role "system") }}'
                     f"{_literal(shape.default_system)}{{{{ end }}}}")
    parts.append("{{ range .Messages }}")
    for i, role in enumerate(ROLES):
        parts.append(f'{{{{ {"if" if i == 0 else "else if"} eq .Role "{role}" }}}}'
                     f"{_literal(shape.before[role])}{{{{ .Content }}}}{_literal(shape.after[role])}")
    parts.append("{{ end }}{{ end }}")
    parts.append(_literal(shape.generation))
    return "".join(parts)


def _literal(text: str) -> str:
    return text.replace("{{", '{{ "{{" }}')


def modelfile(gguf_name: str, tokenizer: PreTrainedTokenizerBase, *, adapter_name: str | None = None,
              note: str = "") -> tuple[str, bool]:
    """(Modelfile text, whether it has a TEMPLATE). Paths are relative: keep it beside the GGUF file(s)."""
    lines = [f"# {note}" if note else "# Written by tunesmith export", f"FROM ./{gguf_name}"]
    if adapter_name:
        lines.append(f"ADAPTER ./{adapter_name}")
    shape = measure(tokenizer)
    template = go_template(shape) if shape is not None else None
    if template is not None and '"""' not in template:
        lines.append(f'TEMPLATE """{template}"""')
    else:
        template = None
        lines.append("# The chat template could not be written as a Go template; Ollama uses the one in the GGUF.")
    for stop in stop_strings(tokenizer, shape):
        lines.append(f"PARAMETER stop {_quote(stop)}")
    return "\n".join(lines) + "\n", template is not None


def stop_strings(tokenizer: PreTrainedTokenizerBase, shape: ChatShape | None) -> list[str]:
    """End of turn (EOS) plus the special tokens that open a turn: the model must not write the next one."""
    stops = [tokenizer.eos_token] if tokenizer.eos_token else []
    if shape is not None:
        specials = [t for t in tokenizer.all_special_tokens if t]
        opening = "".join(shape.before.values())
        stops += [t for t in specials if t in opening and t not in stops]
    return stops


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
