"""stub"""
NAME = "drain"
HELP = "todo"

def add_arguments(p):
    pass

def run(args):
    raise NotImplementedError
