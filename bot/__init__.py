"""The WeChat Official Account channel: endpoint, crypto, parsing, replies, outbound client, tokens."""
