"""stub"""
NAME = "bad_deploy"
HELP = "todo"

def add_arguments(p):
    pass

def run(args):
    raise NotImplementedError
