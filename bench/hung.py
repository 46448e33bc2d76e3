"""stub"""
NAME = "hung"
HELP = "todo"

def add_arguments(p):
    pass

def run(args):
    raise NotImplementedError
