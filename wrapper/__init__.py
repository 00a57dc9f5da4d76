"""The entrypoint wrapper: fetches secrets over mTLS into memfd_secret, then execs the app."""
