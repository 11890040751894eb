"""Pictures for people: grids and charts, fonts for any script, the Steps film, the sweet-spot measure."""
