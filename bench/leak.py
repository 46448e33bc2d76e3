"""stub"""
NAME = "leak"
HELP = "todo"

def add_arguments(p):
    pass

def run(args):
    raise NotImplementedError
