"""What a person sees: progress bars on stderr, contact sheets, summary lines and help texts.

``progress`` (bars), ``words`` (plurals, bytes, rates), ``summaries`` (the last line of each
long command), ``captions`` and ``sheets`` (what a preview shows and how it is captioned),
``contact_sheet`` (drawing the grid), ``help_text`` (examples and preset defaults of --help).
"""
