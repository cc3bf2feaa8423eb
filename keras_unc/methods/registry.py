"""Method names -> classes, so `train.method = 'sngp'` works and typos list the choices."""

METHODS = {}


def register(name):
  """Class decorator: registers a `Method` subclass under `name` (also its `.name`)."""

  def wrap(cls):
    cls.name = name
    METHODS[name] = cls
    return cls

  return wrap


def get_method(name):
  """Builds the method registered as `name` with its gin-bound arguments."""
  if name not in METHODS:
    raise ValueError(f"Unknown method {name!r}. Registered methods: {', '.join(sorted(METHODS))}.")
  return METHODS[name]()
