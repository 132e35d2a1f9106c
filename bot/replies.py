"""Passive replies the router may return, and their XML. ``NoReply`` is answered with ``success``."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from bot.wire import cdata

# XML 1.0 forbids most control characters even inside CDATA; user text may contain them.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
MAX_ARTICLES = 8


def clean(text: str) -> str:
    return _XML_INVALID.sub("", text)


@dataclass(frozen=True)
class NoReply:
    pass


@dataclass(frozen=True)
class TextReply:
    content: str


@dataclass(frozen=True)
class ImageReply:
    media_id: str


@dataclass(frozen=True)
class Article:
    title: str
    description: str
    url: str
    picurl: str = ""


@dataclass(frozen=True)
class NewsReply:
    articles: tuple[Article, ...]


@dataclass(frozen=True)
class TransferReply:
    """Hand the conversation to the human customer-service agents."""


Reply = NoReply | TextReply | ImageReply | NewsReply | TransferReply


@dataclass(frozen=True)
class ReadAnswer:
    """A reply computed from a read-only snapshot (no dedup row: nothing to protect, a retry recomputes
    it). ``follow_up``, if any, is bookkeeping the endpoint writes in a short transaction afterwards."""

    reply: Reply
    follow_up: Callable[[Session], None] | None = None


def _head(to_user: str, from_user: str, create_time: int, msg_type: str) -> str:
    return (
        f"<xml><ToUserName>{cdata(to_user)}</ToUserName><FromUserName>{cdata(from_user)}</FromUserName>"
        f"<CreateTime>{create_time}</CreateTime><MsgType>{cdata(msg_type)}</MsgType>"
    )


@functools.lru_cache(maxsize=4096)
def _article(a: Article) -> str:
    """An article's XML; a pure function of the (frozen) article, so a repeated bill list reuses it."""
    return (
        f"<item><Title>{cdata(clean(a.title))}</Title><Description>{cdata(clean(a.description))}"
        f"</Description><PicUrl>{cdata(a.picurl)}</PicUrl><Url>{cdata(a.url)}</Url></item>"
    )


def render(reply: Reply, *, to_user: str, from_user: str, create_time: int) -> str | None:
    """The reply's XML, or None for ``success`` (nothing to say)."""
    match reply:
        case NoReply():
            return None
        case TextReply(content=content):
            text = clean(content).strip() or "收到。"
            return _head(to_user, from_user, create_time, "text") + f"<Content>{cdata(text)}</Content></xml>"
        case ImageReply(media_id=media_id):
            body = f"<Image><MediaId>{cdata(media_id)}</MediaId></Image></xml>"
            return _head(to_user, from_user, create_time, "image") + body
        case NewsReply(articles=articles):
            items = articles[:MAX_ARTICLES]
            if not items:
                return None
            body = "".join(_article(a) for a in items)
            return (_head(to_user, from_user, create_time, "news")
                    + f"<ArticleCount>{len(items)}</ArticleCount><Articles>{body}</Articles></xml>")
        case TransferReply():
            return _head(to_user, from_user, create_time, "transfer_customer_service") + "</xml>"
    return None
