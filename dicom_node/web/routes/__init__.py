"""One router per resource; each module holds its REST routes and its pages."""
