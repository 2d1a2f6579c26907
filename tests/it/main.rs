mod aliases;
mod cli;
mod support;
mod watcher;
