"""`python -m keras_unc <verb>`: see `keras_unc.cli.main`."""

from keras_unc.cli.main import run

if __name__ == "__main__":
  run()
