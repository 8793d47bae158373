"""What a person sees: progress bars on stderr and contact sheets of images."""
