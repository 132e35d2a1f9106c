"""Stand-in for the WeChat Official Account API (api.weixin.qq.com) and its OAuth page.

``create_app(credentials, push_target=…, push_mode=…)`` builds the WSGI app; ``get_state(app)`` gives the
Python-level :class:`WeChatApiState` for in-process tests. See docs/sandbox.md.
"""

from sandbox.wechat_api.app import create_app, get_state, mask_query
from sandbox.wechat_api.state import WeChatApiState

__all__ = ["WeChatApiState", "create_app", "get_state", "mask_query"]
