"""The self-service web page: each hosted domain's users manage their own account."""
