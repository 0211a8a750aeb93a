"""The one exception type for problems the user can fix (bad config, missing data, ...)."""


class UserError(Exception):
  """A problem with the user's input. The message names the problem and the fix."""
