"""vpiska: the realtime backend of a party app (accounts, events, live WebSocket rooms)."""
