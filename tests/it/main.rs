mod aliases;
mod cli;
mod support;
