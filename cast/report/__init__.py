"""Result tables and figures collected from the metrics of every run."""
