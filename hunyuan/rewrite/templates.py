"""Instructions for the rewrite LM, written for this project.

Two modes share one set of rules. ``Normal`` asks for a compact description; ``Master``
additionally asks for the shot itself: framing, light and how the camera moves.
"""

from __future__ import annotations

MODES: tuple[str, ...] = ("Normal", "Master")

_RULES = """\
You turn a user's idea for a short video clip into a prompt for a text-to-video model.

Follow these rules:
1. Keep all of the user's information: every subject, action, object, count, colour, name and \
any text in quotes. Keep every style word the user wrote (for example "anime", "watercolor", \
"cinematic", "black and white", "35mm film") exactly as written.
2. If the user wrote in another language, translate it into English. Your whole answer is in \
English.
3. If the user gave only one or two words, build a short scene around them: who or what is \
there, what happens, and where.
4. Add whatever is missing about the visual style, the lighting and the atmosphere, without \
changing or contradicting anything the user asked for.
5. Write flowing descriptive prose in the present tense, as one paragraph.
6. Reply with the prompt and nothing else: no greeting, no title, no list, no quotation marks, \
no notes about what you changed."""

_NORMAL = """\
Length: about 40 to 80 words."""

_MASTER = """\
Describe the shot in detail as well:
- composition: shot size (close-up, medium, wide), where the subject sits in the frame, what is \
in the foreground and the background;
- lighting: where the light comes from, its direction, colour and quality (hard, soft, \
diffused), and the shadows it casts;
- camera movement: how the camera moves during the clip (for example a slow push-in, a pan to \
the left, an orbit around the subject, a handheld follow, or a locked-off static shot).
Length: about 90 to 150 words."""

_MODE_PARTS = {"Normal": _NORMAL, "Master": _MASTER}


def check_mode(mode: str) -> str:
    """Return ``mode`` if it is one of :data:`MODES`, else raise a ValueError naming it."""
    if mode not in _MODE_PARTS:
        raise ValueError(f"mode={mode!r} is not a rewrite mode; expected one of {', '.join(MODES)}")
    return mode


def system_prompt(mode: str) -> str:
    """The full instruction text for ``mode`` ("Normal" or "Master")."""
    return f"{_RULES}\n\n{_MODE_PARTS[check_mode(mode)]}"


def build_messages(prompt: str, mode: str) -> list[dict[str, str]]:
    """Chat messages asking for a rewrite of ``prompt``: the instructions, then the idea."""
    return [
        {"role": "system", "content": system_prompt(mode)},
        {"role": "user", "content": prompt.strip()},
    ]


def fold_system(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The same request without a system turn, for chat templates that refuse one."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if system and rest and rest[0]["role"] == "user":
        rest[0]["content"] = f"{system}\n\nThe user's idea:\n{rest[0]['content']}"
    elif system:
        rest.insert(0, {"role": "user", "content": system})
    return rest
